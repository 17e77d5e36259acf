# One A record in a Cloudflare zone, DNS only, and no AAAA: Fly carries UDP over the dedicated IPv4
# only, so a client that picked an IPv6 address would never get an answer.

terraform {
  required_providers {
    cloudflare = {
      source  = "cloudflare/cloudflare"
      version = "~> 5.0" # v5: cloudflare_dns_record (cloudflare_record is gone)
    }
  }
}

resource "cloudflare_dns_record" "tftp" {
  zone_id = var.zone_id
  name    = var.fqdn
  type    = "A"
  content = var.ipv4
  ttl     = var.ttl
  proxied = false # DNS only: Cloudflare's proxy carries HTTP(S), never TFTP over UDP/69
  comment = var.comment
}
