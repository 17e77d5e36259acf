locals {
  fqdn = "${var.record_name}.${var.zone_name}"
}

# After the first `fly deploy`: the dedicated IPv4 (allocated when missing), the machines per
# region, and the A record pointing at that address, all from one `terraform apply`.

module "fly_ipv4" {
  source = "../modules/fly-ipv4"

  fly_app = var.fly_app
  flyctl  = var.flyctl
}

module "fly_regions" {
  source = "../modules/fly-regions"

  fly_app = var.fly_app
  regions = var.regions
  flyctl  = var.flyctl
}

module "dns" {
  source = "../modules/dns-cloudflare"

  zone_id = var.cloudflare_zone_id
  fqdn    = local.fqdn
  ipv4    = module.fly_ipv4.ipv4
  ttl     = var.ttl
}
