# --- Fly.io ---

variable "fly_app" {
  description = "Name of the Fly app (the `app` in fly.toml), already deployed once with `fly deploy`."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$", var.fly_app))
    error_message = "fly_app must be a Fly app name: lower-case letters, digits and hyphens."
  }
}

variable "fly_ipv4" {
  description = "The app's DEDICATED IPv4 (`fly ips allocate-v4`, then `fly ips list`). UDP needs it: shared IPv4 and IPv6 carry no UDP."
  type        = string

  validation {
    condition     = can(regex("^((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])$", var.fly_ipv4))
    error_message = "fly_ipv4 must be a dotted-quad IPv4 address (Fly's UDP has no IPv6)."
  }
}

variable "regions" {
  description = "Machines per Fly region, e.g. { fra = 2, iad = 1 }. Applied with `fly scale count N --region R`; removing a region scales it to 0."
  type        = map(number)
  default     = { fra = 1 }

  validation {
    condition     = length(var.regions) > 0 && alltrue([for region, count in var.regions : can(regex("^[a-z]{3}$", region)) && count >= 1 && count <= 20 && floor(count) == count])
    error_message = "regions maps three-letter Fly region codes to a whole number of machines, 1..20 (remove a region to scale it to 0)."
  }
}

variable "flyctl" {
  description = "flyctl command used by the local-exec provisioners (needs FLY_API_TOKEN or `fly auth login`)."
  type        = string
  default     = "fly"
}

# --- DNS ---

variable "dns_provider" {
  description = "Where the A record lives: \"cloudflare\" or \"route53\"."
  type        = string
  default     = "cloudflare"

  validation {
    condition     = contains(["cloudflare", "route53"], var.dns_provider)
    error_message = "dns_provider must be \"cloudflare\" or \"route53\"."
  }
}

variable "zone_name" {
  description = "DNS zone the record is created in, e.g. example.com."
  type        = string
}

variable "record_name" {
  description = "Host name inside the zone; the PXE clients' TFTP server is <record_name>.<zone_name>."
  type        = string
  default     = "tftp"
}

variable "ttl" {
  description = "TTL of the A record in seconds (60..86400)."
  type        = number
  default     = 300

  validation {
    condition     = var.ttl >= 60 && var.ttl <= 86400
    error_message = "ttl must be between 60 and 86400 seconds."
  }
}

variable "cloudflare_zone_id" {
  description = "Cloudflare zone ID of zone_name (dns_provider = \"cloudflare\"). Token: CLOUDFLARE_API_TOKEN with Zone.DNS edit."
  type        = string
  default     = ""
}

variable "route53_zone_id" {
  description = "Route 53 hosted zone ID of zone_name (dns_provider = \"route53\")."
  type        = string
  default     = ""
}

variable "aws_region" {
  description = "Region for the AWS provider (Route 53 itself is global)."
  type        = string
  default     = "us-east-1"
}
