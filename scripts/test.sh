#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian 12 machine (as root, or with the tools already
# installed), then run the linters and the whole test suite.  Extra arguments go to pytest.
# Python packages go into the project venv .venv/ (never into the system Python: Debian's is
# "externally managed", PEP 668), pinned by constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  curl atftp tftp-hpa busybox   # real TFTP clients
  tftpd-hpa                     # the peer server the tests and the benchmark compare against
  iproute2 iptables util-linux  # network namespaces for the MTU and loss tests; taskset
  qemu-system-x86 ipxe-qemu     # iPXE in QEMU, a real PXE client
  ipxe                          # iPXE binaries for the image's content
  docker.io debootstrap         # image tests against a local engine with stand-in base images
  shellcheck                    # the deployment scripts
  ovmf dnsmasq-base              # UEFI firmware (EDK II's own PXE client) in QEMU, DHCP for it
  systemd                       # systemd-socket-activate and systemd-analyze (socket activation)
  python3-venv                  # the project venv below (Debian splits venv out of python3)
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d keeps packages such as tftpd-hpa from starting daemons on this machine
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    rm -f /usr/sbin/policy-rc.d
  else
    echo "note: not root: tests that need ${missing[*]} will be skipped" >&2
  fi
fi

# The project venv (the README's first command makes the same one) with the test tools in it.
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check --constraint constraints.txt -e '.[test]'
export PATH="$PWD/.venv/bin:$PATH"  # python, ruff, mypy and pytest below are the venv's

# checkov pins its own dependencies: keep it in a venv of its own (skipped with a reason if absent).
if [ ! -x /opt/checkov-venv/bin/checkov ]; then
  { python3 -m venv /opt/checkov-venv && /opt/checkov-venv/bin/pip install -q --disable-pip-version-check checkov; } \
    || echo "note: checkov could not be installed; its test will be skipped" >&2
fi
export CHECKOV=/opt/checkov-venv/bin/checkov

# A local Docker engine for the image tests, started here and stopped by its PID on exit.
if [ "$(id -u)" = 0 ] && [ -z "${EDGETFTP_NO_DOCKER:-}" ]; then
  if bash docker/start-engine.sh; then
    # Images the tests rebuilt leave their old layers dangling: drop them, even after a failure.
    trap 'docker image prune -f >/dev/null 2>&1 || true; bash docker/stop-engine.sh' EXIT
  else
    echo "note: no Docker engine could start; the image tests will be skipped" >&2
  fi
fi

ruff check .
ruff format --check .
mypy
# Four workers on two cores: most of the suite waits (timeouts, relays, QEMU's firmware); one file per
# worker (--dist loadfile) keeps a module's shared server and the image build on one worker.
python -m pytest -q -p no:cacheprovider -n 4 --dist loadfile "$@"
