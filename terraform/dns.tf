locals {
  use_cloudflare = var.dns_provider == "cloudflare"
  use_route53    = var.dns_provider == "route53"
  fqdn           = "${var.record_name}.${var.zone_name}"
}

# One A record and no AAAA: Fly carries UDP over the dedicated IPv4 only, so a client that picked an
# IPv6 address would never get an answer.

resource "cloudflare_dns_record" "tftp" {
  count = local.use_cloudflare ? 1 : 0

  zone_id = var.cloudflare_zone_id
  name    = local.fqdn
  type    = "A"
  content = var.fly_ipv4
  ttl     = var.ttl
  proxied = false # DNS only: Cloudflare's proxy carries HTTP(S), never TFTP over UDP/69
  comment = "edgetftp on Fly app ${var.fly_app} (TFTP, UDP/69)"

  lifecycle {
    precondition {
      condition     = var.cloudflare_zone_id != ""
      error_message = "dns_provider = \"cloudflare\" needs cloudflare_zone_id."
    }
  }
}

resource "aws_route53_record" "tftp" {
  #checkov:skip=CKV2_AWS_23:the record points at Fly.io's dedicated IPv4, which is no AWS resource
  count = local.use_route53 ? 1 : 0

  zone_id = var.route53_zone_id
  name    = local.fqdn
  type    = "A"
  ttl     = var.ttl
  records = [var.fly_ipv4]

  lifecycle {
    precondition {
      condition     = var.route53_zone_id != ""
      error_message = "dns_provider = \"route53\" needs route53_zone_id."
    }
  }
}
