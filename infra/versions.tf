# Terraform for labeler on AWS: the bucket (bucket.tf), the workers' least-privilege role (iam.tf), an EKS
# cluster with a GPU node group (eks.tf), the image registry (ecr.tf). Checked offline by
# tests/test_deploy.py (parsed with python-hcl2); applied as docs/runbook.md shows.
terraform {
  required_version = ">= 1.6"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.80"
    }
    tls = {
      source  = "hashicorp/tls"
      version = "~> 4.0"
    }
  }
}

provider "aws" {
  region = var.region
  default_tags {
    tags = { project = "labeler" }
  }
}

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
