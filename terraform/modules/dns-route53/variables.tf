variable "zone_id" {
  description = "ID of the DNS zone the record is created in."
  type        = string

  validation {
    condition     = var.zone_id != ""
    error_message = "zone_id must be set."
  }
}

variable "fqdn" {
  description = "Full name of the record, e.g. tftp.example.com."
  type        = string
}

variable "ipv4" {
  description = "The Fly app's dedicated IPv4 the record points at."
  type        = string

  validation {
    condition     = can(cidrhost("${var.ipv4}/32", 0)) && !can(regex(":", var.ipv4))
    error_message = "ipv4 must be an IPv4 address (Fly's UDP has no IPv6)."
  }
}

variable "ttl" {
  description = "TTL of the A record in seconds."
  type        = number
}
