# Providers pinned to a minor series; `terraform init` writes .terraform.lock.hcl with their hashes
# (commit it on first init: the offline CI here cannot download providers).
terraform {
  required_version = ">= 1.6.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.80"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      project    = "softprompt"
      managed-by = "terraform"
    }
  }
}
