# One A record in a Route 53 hosted zone, and no AAAA: Fly carries UDP over the dedicated IPv4 only,
# so a client that picked an IPv6 address would never get an answer.

terraform {
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0, < 7.0"
    }
  }
}

resource "aws_route53_record" "tftp" {
  #checkov:skip=CKV2_AWS_23:the record points at Fly.io's dedicated IPv4, which is no AWS resource
  zone_id = var.zone_id
  name    = var.fqdn
  type    = "A"
  ttl     = var.ttl
  records = [var.ipv4]
}
