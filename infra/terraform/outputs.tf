output "registry_uri" {
  description = "SOFTPROMPT registry URI for the pipeline and the inference service."
  value       = "s3://${aws_s3_bucket.registry.bucket}/prompts"
}

output "dvc_remote_url" {
  description = "`dvc remote add -d storage <this>`."
  value       = "s3://${aws_s3_bucket.registry.bucket}/dvc"
}

output "image_repository_url" {
  description = "Push target of `make image`."
  value       = aws_ecr_repository.image.repository_url
}

output "pipeline_role_arn" {
  value = aws_iam_role.pipeline.arn
}

output "reader_role_arn" {
  value = aws_iam_role.reader.arn
}
