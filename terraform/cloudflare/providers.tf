# Reads CLOUDFLARE_API_TOKEN from the environment.
provider "cloudflare" {}
