output "record" {
  description = "The A record: name, type and address."
  value       = { name = cloudflare_dns_record.tftp.name, type = cloudflare_dns_record.tftp.type, records = [cloudflare_dns_record.tftp.content] }
}

output "proxied" {
  description = "Whether Cloudflare proxies the name (never: TFTP is UDP/69)."
  value       = cloudflare_dns_record.tftp.proxied
}
