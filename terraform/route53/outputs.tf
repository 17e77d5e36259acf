output "ipv4" {
  description = "The app's dedicated IPv4 the A record points at (DHCP next-server for PXE clients)."
  value       = module.fly_ipv4.ipv4
}

output "fqdn" {
  description = "Name of the TFTP server: tftp://<fqdn>/boot.ipxe from iPXE."
  value       = local.fqdn
}

output "record" {
  description = "The A record as the DNS provider has it."
  value       = module.dns.record
}

output "regions" {
  description = "Machines per Fly region, as applied with flyctl."
  value       = module.fly_regions.regions
}

output "machine_count" {
  description = "Machines across all regions."
  value       = module.fly_regions.machine_count
}
