terraform {
  # terraform_data (the flyctl route for regions) needs 1.4; preconditions and the provider
  # versions below are fine from 1.5.
  required_version = ">= 1.5.0"

  required_providers {
    cloudflare = {
      source  = "cloudflare/cloudflare"
      version = "~> 5.0" # v5: cloudflare_dns_record (cloudflare_record is gone)
    }
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0, < 7.0"
    }
  }
}

# Reads CLOUDFLARE_API_TOKEN from the environment; it makes no call until a record is managed.
provider "cloudflare" {}

# Terraform configures every provider of a configuration, even one whose resources all have
# count = 0, and the AWS provider refuses to start without credentials.  With Cloudflare chosen it
# gets placeholder keys and skips every start-up call, so it never contacts AWS.  With Route 53 chosen
# it uses the normal credential chain (AWS_PROFILE, AWS_ACCESS_KEY_ID, SSO, ...).
provider "aws" {
  region                      = var.aws_region
  access_key                  = local.use_route53 ? null : "route53-not-used"
  secret_key                  = local.use_route53 ? null : "route53-not-used"
  skip_credentials_validation = !local.use_route53
  skip_requesting_account_id  = !local.use_route53
  skip_metadata_api_check     = !local.use_route53
}
