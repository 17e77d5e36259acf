# Machines per region, through flyctl (see docs/deploy.md for why not a Fly provider).
#
# `fly deploy` owns the machines' configuration (image, services, checks from fly.toml); Terraform
# only says how many run where, with the first-party command for it: `fly scale count N --region R`
# clones the app's machine into R until R has N.  Two resources per region keep a count change from
# ever passing through 0:
#   - fly_region exists while the region is in var.regions; destroying it (region removed) scales
#     that region to 0;
#   - fly_scale is replaced whenever the count changes and only ever scales up or down to the count.
# Built-in terraform_data only: this module needs no provider download.

resource "terraform_data" "fly_region" {
  for_each = var.regions

  triggers_replace = {
    app    = var.fly_app
    region = each.key
    flyctl = var.flyctl
  }

  provisioner "local-exec" {
    when    = destroy
    command = "${self.triggers_replace.flyctl} scale count 0 --region ${self.triggers_replace.region} --app ${self.triggers_replace.app} --yes"
  }
}

resource "terraform_data" "fly_scale" {
  for_each = var.regions

  triggers_replace = {
    app    = var.fly_app
    region = each.key
    count  = each.value
  }

  provisioner "local-exec" {
    command = "${var.flyctl} scale count ${each.value} --region ${each.key} --app ${var.fly_app} --yes"
  }

  # Created after (and so destroyed before) the region's fly_region.
  depends_on = [terraform_data.fly_region]
}
