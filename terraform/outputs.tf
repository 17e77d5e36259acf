output "ipv4" {
  description = "The app's dedicated IPv4 the A record points at (DHCP next-server for PXE clients)."
  value       = var.fly_ipv4
}

output "fqdn" {
  description = "Name of the TFTP server: tftp://<fqdn>/boot.ipxe from iPXE."
  value       = local.fqdn
}

output "dns_provider" {
  description = "Where the A record was created."
  value       = var.dns_provider
}

output "regions" {
  description = "Machines per Fly region, as applied with flyctl."
  value       = var.regions
}

output "machine_count" {
  description = "Machines across all regions."
  value       = sum(values(var.regions))
}
