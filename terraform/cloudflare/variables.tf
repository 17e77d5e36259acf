# --- Fly.io ---

variable "fly_app" {
  description = "Name of the Fly app (the `app` in fly.toml), already deployed once with `fly deploy`."
  type        = string
}

variable "regions" {
  description = "Machines per Fly region, e.g. { fra = 2, iad = 1 }. Applied with `fly scale count N --region R`; removing a region scales it to 0."
  type        = map(number)
  default     = { fra = 1 }
}

variable "flyctl" {
  description = "flyctl command for the local-exec provisioners (needs FLY_API_TOKEN or `fly auth login`, and jq for the IPv4 lookup)."
  type        = string
  default     = "fly"
}

# --- DNS ---

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
  description = "Cloudflare zone ID of zone_name. Token: CLOUDFLARE_API_TOKEN with Zone.DNS edit."
  type        = string
}
