# The workers' role: read and write objects under the bucket's prefix only, list only that prefix, use the
# bucket's KMS key, and nothing else (no s3:*, no "*" resource). Pods assume it through IRSA (service
# account labeler/labeler, deploy/kuberay/serviceaccount.yaml); cluster-launcher nodes through the
# instance profile labeler-node. Credentials reach both from the standard AWS chain; none is stored.
locals {
  prefix_objects = "${aws_s3_bucket.labels.arn}/${var.prefix}/*"
  oidc_issuer    = replace(aws_eks_cluster.labeler.identity[0].oidc[0].issuer, "https://", "")
}

data "aws_iam_policy_document" "worker" {
  statement {
    sid       = "ListOwnPrefix"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.labels.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [var.prefix, "${var.prefix}/*"]
    }
  }
  statement {
    sid    = "ReadWriteOwnPrefix"
    effect = "Allow"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = [local.prefix_objects]
  }
  statement {
    sid       = "UseBucketKey"
    effect    = "Allow"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.bucket.arn]
  }
}

resource "aws_iam_policy" "worker" {
  name        = "labeler-worker"
  description = "labeler workers: objects under s3://${var.bucket_name}/${var.prefix}/ only"
  policy      = data.aws_iam_policy_document.worker.json
}

data "aws_iam_policy_document" "worker_trust_irsa" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [aws_iam_openid_connect_provider.eks.arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:sub"
      values   = ["system:serviceaccount:labeler:labeler"]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "worker" {
  name               = "labeler-worker"
  assume_role_policy = data.aws_iam_policy_document.worker_trust_irsa.json
}

resource "aws_iam_role_policy_attachment" "worker" {
  role       = aws_iam_role.worker.name
  policy_arn = aws_iam_policy.worker.arn
}

# The same permissions for nodes made by the Ray cluster launcher (deploy/launcher/aws-gpu.yaml).
data "aws_iam_policy_document" "node_trust_ec2" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "launcher_node" {
  name               = "labeler-node"
  assume_role_policy = data.aws_iam_policy_document.node_trust_ec2.json
}

resource "aws_iam_role_policy_attachment" "launcher_node" {
  role       = aws_iam_role.launcher_node.name
  policy_arn = aws_iam_policy.worker.arn
}

resource "aws_iam_role_policy_attachment" "launcher_node_ecr" {
  role       = aws_iam_role.launcher_node.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly"
}

resource "aws_iam_instance_profile" "launcher_node" {
  name = "labeler-node"
  role = aws_iam_role.launcher_node.name
}

# The launcher's head node also runs Ray's autoscaler, which starts and stops the worker instances and
# hands them the node profile. This is the head's only extra; its S3 access is the workers' policy.
data "aws_iam_policy_document" "launcher_head" {
  statement {
    sid       = "DescribeForAutoscaler"
    effect    = "Allow"
    actions   = ["ec2:DescribeInstances", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "ec2:DescribeImages"]
    resources = ["*"] # EC2 Describe* calls support no resource-level scoping
  }
  statement {
    sid     = "LaunchWorkers"
    effect  = "Allow"
    actions = ["ec2:RunInstances", "ec2:CreateTags"]
    # RunInstances is also checked against the AMI, whose ARN has no account (a public DLAMI), hence image/*.
    resources = [
      "arn:${data.aws_partition.current.partition}:ec2:${var.region}:${data.aws_caller_identity.current.account_id}:*",
      "arn:${data.aws_partition.current.partition}:ec2:${var.region}::image/*",
    ]
  }
  statement {
    sid       = "ManageOwnWorkers"
    effect    = "Allow"
    actions   = ["ec2:StartInstances", "ec2:StopInstances", "ec2:TerminateInstances"]
    resources = ["arn:${data.aws_partition.current.partition}:ec2:${var.region}:${data.aws_caller_identity.current.account_id}:instance/*"]
    # Only the instances Ray's launcher tagged as this cluster's (cluster_name in deploy/launcher/aws-gpu.yaml),
    # never the account's other instances (EKS nodes included).
    condition {
      test     = "StringEquals"
      variable = "ec2:ResourceTag/ray-cluster-name"
      values   = ["labeler"]
    }
  }
  statement {
    sid       = "PassNodeRole"
    effect    = "Allow"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.launcher_node.arn]
  }
}

resource "aws_iam_role" "launcher_head" {
  name               = "labeler-head"
  assume_role_policy = data.aws_iam_policy_document.node_trust_ec2.json
}

resource "aws_iam_role_policy" "launcher_head" {
  name   = "labeler-autoscaler"
  role   = aws_iam_role.launcher_head.id
  policy = data.aws_iam_policy_document.launcher_head.json
}

resource "aws_iam_role_policy_attachment" "launcher_head_worker" {
  role       = aws_iam_role.launcher_head.name
  policy_arn = aws_iam_policy.worker.arn
}

resource "aws_iam_role_policy_attachment" "launcher_head_ecr" {
  role       = aws_iam_role.launcher_head.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly"
}

resource "aws_iam_instance_profile" "launcher_head" {
  name = "labeler-head"
  role = aws_iam_role.launcher_head.name
}
