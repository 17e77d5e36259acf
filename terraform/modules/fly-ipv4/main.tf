# The app's dedicated IPv4, allocated by flyctl when it has none, and read back into Terraform.
#
# Only Terraform's built-ins are used (no provider download: see docs/deploy.md for the choice):
#   - terraform_data runs fly-ipv4.sh once per app: it allocates a dedicated IPv4 unless the app has
#     one (`fly ips list --json`, `fly ips allocate-v4`), and writes the address as the one output of
#     a small state file;
#   - terraform_remote_state (built in, local backend) reads that file back after the script ran.
# The file is re-read at every plan; when it is missing (a fresh checkout), no-address.json (a state
# without outputs) is read instead, and the precondition on the ipv4 output says how to fetch it again.

locals {
  address_file = abspath("${path.root}/fly-ipv4.${var.fly_app}.tfstate")
}

resource "terraform_data" "allocate" {
  # The output (the file's path) is unknown while the script is still to run, so the read below waits.
  input = local.address_file

  triggers_replace = {
    app    = var.fly_app
    flyctl = var.flyctl
  }

  provisioner "local-exec" {
    command = "sh '${path.module}/fly-ipv4.sh'"
    environment = {
      FLYCTL = var.flyctl
      APP    = var.fly_app
      OUT    = local.address_file
    }
  }
}

data "terraform_remote_state" "address" {
  backend = "local"
  config = {
    path = fileexists(terraform_data.allocate.output) ? terraform_data.allocate.output : "${path.module}/no-address.json"
  }
  defaults = { ipv4 = null }

  depends_on = [terraform_data.allocate]
}
