# Least privilege, by EKS Pod Identity (no keys anywhere): the pipeline's service account may read
# and write prompts/ and dvc/ (never delete: versions are immutable, and versioning keeps old
# alias values); downstream services may only read prompts/.

locals {
  prompts_arn = "${aws_s3_bucket.registry.arn}/prompts/*"
  dvc_arn     = "${aws_s3_bucket.registry.arn}/dvc/*"
}

data "aws_iam_policy_document" "pod_identity_trust" {
  statement {
    actions = ["sts:AssumeRole", "sts:TagSession"]

    principals {
      type        = "Service"
      identifiers = ["pods.eks.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "pipeline" {
  statement {
    sid       = "ListOwnPrefixes"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.registry.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["prompts/", "prompts/*", "dvc/", "dvc/*"]
    }
  }

  statement {
    sid       = "ReadWriteObjects"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
    resources = [local.prompts_arn, local.dvc_arn]
  }

  statement {
    sid       = "UseBucketKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.registry.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "reader" {
  statement {
    sid       = "ListPrompts"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.registry.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["prompts/", "prompts/*"]
    }
  }

  statement {
    sid       = "ReadPrompts"
    actions   = ["s3:GetObject"]
    resources = [local.prompts_arn]
  }

  statement {
    sid       = "DecryptBucketKey"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.registry.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "pipeline" {
  name               = "softprompt-pipeline"
  assume_role_policy = data.aws_iam_policy_document.pod_identity_trust.json
}

resource "aws_iam_role_policy" "pipeline" {
  name   = "registry-read-write"
  role   = aws_iam_role.pipeline.id
  policy = data.aws_iam_policy_document.pipeline.json
}

resource "aws_iam_role" "reader" {
  name               = "softprompt-reader"
  assume_role_policy = data.aws_iam_policy_document.pod_identity_trust.json
}

resource "aws_iam_role_policy" "reader" {
  name   = "registry-read-only"
  role   = aws_iam_role.reader.id
  policy = data.aws_iam_policy_document.reader.json
}

# The agent that hands pods their role's credentials (skip if the cluster already runs it).
resource "aws_eks_addon" "pod_identity" {
  cluster_name = var.cluster_name
  addon_name   = "eks-pod-identity-agent"
}

resource "aws_eks_pod_identity_association" "pipeline" {
  cluster_name    = var.cluster_name
  namespace       = var.namespace
  service_account = var.pipeline_service_account
  role_arn        = aws_iam_role.pipeline.arn
  depends_on      = [aws_eks_addon.pod_identity]
}

resource "aws_eks_pod_identity_association" "reader" {
  cluster_name    = var.cluster_name
  namespace       = var.namespace
  service_account = var.reader_service_account
  role_arn        = aws_iam_role.reader.arn
  depends_on      = [aws_eks_addon.pod_identity]
}
