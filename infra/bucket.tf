# The bucket: private (every public access path blocked), versioned (an overwritten or deleted label part
# can be recovered), encrypted at rest with a customer-managed KMS key, TLS only, and incomplete multipart
# uploads (from a killed worker) aborted after a few days.
resource "aws_kms_key" "bucket" {
  description         = "labeler bucket encryption"
  enable_key_rotation = true
}

resource "aws_s3_bucket" "labels" {
  bucket = var.bucket_name
}

resource "aws_s3_bucket_public_access_block" "labels" {
  bucket                  = aws_s3_bucket.labels.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "labels" {
  bucket = aws_s3_bucket.labels.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "labels" {
  bucket = aws_s3_bucket.labels.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "labels" {
  bucket = aws_s3_bucket.labels.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.bucket.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "labels" {
  bucket = aws_s3_bucket.labels.id
  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = var.multipart_abort_days
    }
  }
  rule {
    id     = "expire-old-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
  }
}

data "aws_iam_policy_document" "bucket_tls_only" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"] # a Deny: every request without TLS is refused
    resources = [aws_s3_bucket.labels.arn, "${aws_s3_bucket.labels.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "labels" {
  bucket     = aws_s3_bucket.labels.id
  policy     = data.aws_iam_policy_document.bucket_tls_only.json
  depends_on = [aws_s3_bucket_public_access_block.labels]
}
