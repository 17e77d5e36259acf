output "ipv4" {
  description = "The app's dedicated IPv4, as fly-ipv4.sh read it from `fly ips list`."
  value       = data.terraform_remote_state.address.outputs.ipv4

  precondition {
    condition     = data.terraform_remote_state.address.outputs.ipv4 != null
    error_message = "The address file ${local.address_file} is missing (a fresh checkout?). Read the address again: terraform apply -replace=module.fly_ipv4.terraform_data.allocate"
  }
}

output "address_file" {
  description = "Where fly-ipv4.sh wrote the address (beside the root module)."
  value       = local.address_file
}
