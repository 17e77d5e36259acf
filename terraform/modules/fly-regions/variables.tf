variable "fly_app" {
  description = "Name of the Fly app (the `app` in fly.toml), already deployed once with `fly deploy`."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$", var.fly_app))
    error_message = "fly_app must be a Fly app name: lower-case letters, digits and hyphens."
  }
}

variable "regions" {
  description = "Machines per Fly region, e.g. { fra = 2, iad = 1 }. Applied with `fly scale count N --region R`; removing a region scales it to 0."
  type        = map(number)

  validation {
    condition     = length(var.regions) > 0 && alltrue([for region, count in var.regions : can(regex("^[a-z]{3}$", region)) && count >= 1 && count <= 20 && floor(count) == count])
    error_message = "regions maps three-letter Fly region codes to a whole number of machines, 1..20 (remove a region to scale it to 0)."
  }
}

variable "flyctl" {
  description = "flyctl command used by the local-exec provisioners (needs FLY_API_TOKEN or `fly auth login`)."
  type        = string
}
