output "bucket" {
  description = "The bucket; labeler's objects live under s3://BUCKET/PREFIX/."
  value       = aws_s3_bucket.labels.id
}

output "worker_role_arn" {
  description = "IRSA role of the labeler service account (deploy/kuberay/serviceaccount.yaml)."
  value       = aws_iam_role.worker.arn
}

output "launcher_head_instance_profile_arn" {
  description = "Instance profile of the cluster launcher's head node (deploy/launcher/aws-gpu.yaml)."
  value       = aws_iam_instance_profile.launcher_head.arn
}

output "launcher_node_instance_profile_arn" {
  description = "Instance profile of the cluster launcher's GPU workers (deploy/launcher/aws-gpu.yaml)."
  value       = aws_iam_instance_profile.launcher_node.arn
}

output "ecr_repository_url" {
  description = "Where to push the image (REGISTRY in deploy/)."
  value       = aws_ecr_repository.labeler.repository_url
}

output "cluster_name" {
  description = "EKS cluster, for aws eks update-kubeconfig."
  value       = aws_eks_cluster.labeler.name
}
