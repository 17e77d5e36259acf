variable "fly_app" {
  description = "Name of the Fly app whose dedicated IPv4 is allocated and read back."
  type        = string
}

variable "flyctl" {
  description = "flyctl command (needs FLY_API_TOKEN or `fly auth login`)."
  type        = string
}
