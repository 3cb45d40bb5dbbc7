# The project image (infra/Dockerfile; `make image IMAGE=<repository_url>:<tag>`). Tags are
# immutable, so a tag names one build forever and a rollback is a redeploy of an older tag.
resource "aws_ecr_repository" "image" {
  name                 = "softprompt"
  image_tag_mutability = "IMMUTABLE"

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
  }
}

resource "aws_ecr_lifecycle_policy" "image" {
  repository = aws_ecr_repository.image.name
  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "keep the 30 newest images"
      selection    = { tagStatus = "any", countType = "imageCountMoreThan", countNumber = 30 }
      action       = { type = "expire" }
    }]
  })
}
