variable "region" {
  description = "AWS region of everything here."
  type        = string
  default     = "us-east-1"
}

variable "bucket_name" {
  description = "Name of the S3 bucket for exemplars, models and labels (globally unique)."
  type        = string
}

variable "prefix" {
  description = "Key prefix under which labeler reads and writes; the workers' role can touch nothing else."
  type        = string
  default     = "labeler"
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]*$", var.prefix))
    error_message = "prefix must be lower-case letters, digits and dashes, without slashes (e.g. labeler)."
  }
}

variable "cluster_name" {
  description = "Name of the EKS cluster."
  type        = string
  default     = "labeler"
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version."
  type        = string
  default     = "1.33"
}

variable "gpu_instance_types" {
  description = "Instance types of the GPU node group (one NVIDIA GPU each)."
  type        = list(string)
  default     = ["g5.2xlarge"] # one A10G, 8 vCPU, 32 GiB: room for a worker pod (4 CPUs, 24 GiB) and the node's own
}

variable "gpu_nodes" {
  description = "GPU nodes the node group runs. Nothing scales it by itself (no cluster autoscaler): set it to the run's workers.count."
  type        = number
  default     = 4
}

variable "gpu_nodes_max" {
  description = "Most GPU nodes the node group scales to."
  type        = number
  default     = 8
}

variable "vpc_cidr" {
  description = "CIDR block of the cluster's VPC."
  type        = string
  default     = "10.40.0.0/16"
}

variable "multipart_abort_days" {
  description = "Days after which incomplete multipart uploads are aborted (and stop costing)."
  type        = number
  default     = 3
}
