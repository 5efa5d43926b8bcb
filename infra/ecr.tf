# The image registry for deploy/image/Dockerfile: tags are immutable, images scanned on push.
resource "aws_ecr_repository" "labeler" {
  name                 = "labeler"
  image_tag_mutability = "IMMUTABLE"
  image_scanning_configuration {
    scan_on_push = true
  }
  encryption_configuration {
    encryption_type = "KMS"
  }
}
