terraform {
  # terraform_data needs 1.4; output preconditions and the provider versions are fine from 1.5.
  required_version = ">= 1.5.0"

  # The one provider this DNS choice needs: nothing else is downloaded.  Fly is driven by flyctl.
  required_providers {
    cloudflare = {
      source  = "cloudflare/cloudflare"
      version = "~> 5.0"
    }
  }
}
