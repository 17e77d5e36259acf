# `terraform test` (run by tests/test_deploy_terraform.py): the AWS provider is mocked, flyctl is the
# stand-in given with -var flyctl=... (it records its calls; the pytest side checks them).

mock_provider "aws" {}

variables {
  fly_app         = "edgetftp-test"
  zone_name       = "example.com"
  route53_zone_id = "Z0123456789ABCDEFGHIJ"
  regions         = { fra = 2, iad = 1 }
}

run "first_apply" {
  command = apply

  assert {
    condition     = module.dns.record.type == "A" && length(module.dns.record.records) == 1 && module.dns.record.records[0] == output.ipv4
    error_message = "exactly one A record, pointing at the dedicated IPv4 read back from flyctl"
  }

  assert {
    condition     = output.ipv4 == "203.0.113.7"
    error_message = "the IPv4 is the one the stand-in flyctl allocated"
  }

  assert {
    condition     = output.fqdn == "tftp.example.com"
    error_message = "record name"
  }

  assert {
    condition     = output.regions == tomap({ fra = 2, iad = 1 }) && output.machine_count == 3
    error_message = "regions as given"
  }
}

run "rescale_and_remove_a_region" {
  command = apply

  variables {
    regions = { fra = 3, sin = 1 }
  }

  assert {
    condition     = output.regions == tomap({ fra = 3, sin = 1 }) && output.machine_count == 4
    error_message = "regions as given"
  }

  assert {
    condition     = length(module.dns.record.records) == 1 && module.dns.record.records[0] == "203.0.113.7"
    error_message = "the A record is unchanged"
  }
}
