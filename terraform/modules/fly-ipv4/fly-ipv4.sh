#!/bin/sh
# Allocate the app's dedicated IPv4 unless it has one, and write it as a Terraform state file whose one
# output is `ipv4` (read back by terraform_remote_state).  Needs flyctl and jq.
# Environment: FLYCTL (command), APP (Fly app), OUT (file to write).
set -eu

dedicated_v4() {
    # `fly ips list --json`: [{"Address": ..., "Type": "v4" | "shared_v4" | "v6" | "private_v6", ...}]
    $FLYCTL ips list --app "$APP" --json | jq -r '[.[] | select(.Type == "v4") | .Address][0] // empty'
}

address=$(dedicated_v4)
if [ -z "$address" ]; then
    # UDP needs a dedicated IPv4: shared IPv4 and IPv6 addresses carry no UDP on Fly.
    $FLYCTL ips allocate-v4 --app "$APP" --yes >&2
    address=$(dedicated_v4)
fi
if [ -z "$address" ]; then
    echo "fly-ipv4.sh: app $APP has no dedicated IPv4 even after fly ips allocate-v4" >&2
    exit 1
fi
jq -n --arg ipv4 "$address" '{
    version: 4, terraform_version: "1.5.0", serial: 1, lineage: "edgetftp-fly-ipv4",
    outputs: {ipv4: {value: $ipv4, type: "string"}}, resources: []
}' >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "fly-ipv4.sh: $APP has dedicated IPv4 $address"
