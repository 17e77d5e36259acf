output "record" {
  description = "The A record: name, type and addresses."
  value       = { name = aws_route53_record.tftp.fqdn, type = aws_route53_record.tftp.type, records = tolist(aws_route53_record.tftp.records) }
}
