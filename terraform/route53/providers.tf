# The normal AWS credential chain (AWS_PROFILE, AWS_ACCESS_KEY_ID, SSO, ...).
provider "aws" {
  region = var.aws_region
}
