output "regions" {
  description = "Machines per Fly region, as applied with flyctl."
  value       = var.regions
  # After the scaling ran: a root that reads this waits for flyctl.
  depends_on = [terraform_data.fly_scale]
}

output "machine_count" {
  description = "Machines across all regions."
  value       = sum(values(var.regions))
}
