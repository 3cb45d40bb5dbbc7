# The GPU node pool: the label and taint below are what the pipeline's model steps select and
# tolerate (components/cluster.py ClusterConfig) and what infra/k8s schedules onto GPUs. Only pods
# that tolerate the taint land here, so CPU work never holds a GPU node up.

locals {
  gpu_label = { "softprompt.io/pool" = "gpu" }
}

data "aws_iam_policy_document" "node_trust" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "gpu_node" {
  name               = "softprompt-gpu-node"
  assume_role_policy = data.aws_iam_policy_document.node_trust.json
}

resource "aws_iam_role_policy_attachment" "gpu_node" {
  for_each = toset([
    "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
    "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
  ])
  role       = aws_iam_role.gpu_node.name
  policy_arn = each.value
}

resource "aws_eks_node_group" "gpu" {
  cluster_name    = var.cluster_name
  node_group_name = "softprompt-gpu"
  node_role_arn   = aws_iam_role.gpu_node.arn
  subnet_ids      = var.gpu_subnet_ids
  ami_type        = "AL2023_x86_64_NVIDIA" # NVIDIA driver + container toolkit preinstalled
  instance_types  = var.gpu_instance_types
  capacity_type   = var.gpu_capacity_type
  disk_size       = 100 # the CUDA image is several GB; room for two versions during an upgrade

  scaling_config {
    min_size     = 0
    desired_size = 0
    max_size     = var.gpu_max_nodes
  }

  update_config {
    max_unavailable = 1
  }

  labels = local.gpu_label

  taint {
    key    = "nvidia.com/gpu"
    value  = "present"
    effect = "NO_SCHEDULE"
  }

  lifecycle {
    ignore_changes = [scaling_config[0].desired_size] # the autoscaler owns it
  }

  depends_on = [aws_iam_role_policy_attachment.gpu_node]
}

# The Cluster Autoscaler scales a group up from zero only if it can tell the new node's labels,
# taints and GPUs from the Auto Scaling group's tags; EKS does not copy node-group settings there.
resource "aws_autoscaling_group_tag" "gpu" {
  for_each = {
    "k8s.io/cluster-autoscaler/enabled"                                = "true"
    "k8s.io/cluster-autoscaler/${var.cluster_name}"                    = "owned"
    "k8s.io/cluster-autoscaler/node-template/label/softprompt.io/pool" = "gpu"
    "k8s.io/cluster-autoscaler/node-template/taint/nvidia.com/gpu"     = "present:NoSchedule"
    "k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu" = "1"
  }
  autoscaling_group_name = aws_eks_node_group.gpu.resources[0].autoscaling_groups[0].name

  tag {
    key                 = each.key
    value               = each.value
    propagate_at_launch = false
  }
}
