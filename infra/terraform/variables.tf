variable "region" {
  description = "AWS region of the bucket, the image repository and the node group."
  type        = string
  default     = "us-east-1"
}

variable "bucket_name" {
  description = "S3 bucket for the prompt registry (prompts/) and the DVC remote (dvc/)."
  type        = string
  default     = "softprompt-registry"
}

variable "cluster_name" {
  description = "Existing EKS cluster that runs Kubeflow Pipelines; this module adds to it."
  type        = string
}

variable "namespace" {
  description = "Kubernetes namespace of the pipeline runs and the inference service (infra/k8s)."
  type        = string
  default     = "softprompt"
}

variable "pipeline_service_account" {
  description = "Service account of the pipeline runs: reads and writes the registry and the DVC remote."
  type        = string
  default     = "softprompt-pipeline"
}

variable "reader_service_account" {
  description = "Service account of downstream services (the inference service): reads prompts only."
  type        = string
  default     = "softprompt-serve"
}

variable "gpu_subnet_ids" {
  description = "Private subnets of the GPU node group."
  type        = list(string)
}

variable "gpu_instance_types" {
  description = "GPU instance types of the node group (one NVIDIA GPU each by default)."
  type        = list(string)
  default     = ["g6.xlarge", "g5.xlarge"]
}

variable "gpu_capacity_type" {
  description = "ON_DEMAND or SPOT. Training resumes from its checkpoint after a spot reclaim."
  type        = string
  default     = "ON_DEMAND"

  validation {
    condition     = contains(["ON_DEMAND", "SPOT"], var.gpu_capacity_type)
    error_message = "gpu_capacity_type must be ON_DEMAND or SPOT."
  }
}

variable "gpu_max_nodes" {
  description = "Upper bound of the GPU node group; it scales to zero when idle."
  type        = number
  default     = 4

  validation {
    condition     = var.gpu_max_nodes >= 1
    error_message = "gpu_max_nodes must be at least 1."
  }
}

variable "noncurrent_version_days" {
  description = "Days an overwritten or deleted object version is kept (alias history, DVC cache)."
  type        = number
  default     = 90
}
