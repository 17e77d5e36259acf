#!/usr/bin/env bash
# Build local stand-ins for the two base images the Dockerfile names, for machines that reach no
# container registry (CI here).  They are NOT the registry images:
#
#   debian:12-slim                          <- debootstrap --variant=minbase bookworm, imported as is,
#                                              plus this host's CA bundle for pip (see below)
#   gcr.io/distroless/python3-debian12:latest <- Debian 12 packages' files only (python3.11, libc,
#                                              OpenSSL, CA bundle, tzdata): no shell, no apt, no dpkg
#
# Why the CA bundle: pip inside `docker build` reaches PyPI through whatever this host uses; where that
# is a TLS-intercepting proxy, pip must trust the host's CA.  The stand-in builder carries the host's
# bundle and sets PIP_CERT / SSL_CERT_FILE / REQUESTS_CA_BUNDLE (and PIP_INDEX_URL / PIP_EXTRA_INDEX_URL
# when the host's pip has http(s) indexes configured), so the real Dockerfile stays plain PyPI.
# These variables live only in the builder stage; the final image is FROM the distroless stand-in.
#
# Usage: docker/build-base-images.sh [--force]     (needs root, debootstrap and a running engine)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUILDER_TAG=${EDGETFTP_BUILDER_BASE:-debian:12-slim}
RUNTIME_TAG=${EDGETFTP_RUNTIME_BASE:-gcr.io/distroless/python3-debian12:latest}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
HOST_CA_BUNDLE=${EDGETFTP_HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
CI_CA_PATH=/usr/local/share/edgetftp-ci/host-ca-bundle.crt

force=false
[[ ${1:-} == --force ]] && force=true

# Images built from other versions of these scripts are rebuilt: each carries a digest of them.
RECIPE=$(cat "$HERE/build-base-images.sh" "$HERE"/standin/* | sha256sum | cut -c1-16)
RECIPE_LABEL=org.edgetftp.standin-recipe

image_is_current() {
    [[ $(docker image inspect --format "{{ index .Config.Labels \"$RECIPE_LABEL\" }}" "$1" 2>/dev/null) == "$RECIPE" ]]
}

if ! $force && image_is_current "$BUILDER_TAG" && image_is_current "$RUNTIME_TAG"; then
    echo "build-base-images: $BUILDER_TAG and $RUNTIME_TAG are current (use --force to rebuild)"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "build-base-images: debootstrap is missing" >&2; exit 1; }

WORK=$(mktemp -d /var/tmp/edgetftp-base.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
ROOTFS=$WORK/rootfs

# An http(s) index the host's pip uses (file:// ones are host paths and mean nothing in a build).
pip_setting() {
    local value
    value=$(pip config get "$1" 2>/dev/null || true)
    tr ' ' '\n' <<<"$value" | grep -E '^https?://' | paste -sd' ' || true
}

build_builder_image() {
    echo "build-base-images: debootstrap bookworm (minbase) from $MIRROR"
    debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
        tail -n 30 "$WORK/debootstrap.log" >&2
        exit 1
    }
    # The apt sources of the real image (deb822, with updates and security), no package caches.
    rm -f "$ROOTFS/etc/apt/sources.list"
    cat >"$ROOTFS/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
    mkdir -p "$(dirname "$ROOTFS$CI_CA_PATH")"
    cp "$HOST_CA_BUNDLE" "$ROOTFS$CI_CA_PATH"

    local changes=(
        --change 'CMD ["bash"]'
        --change "LABEL $RECIPE_LABEL=$RECIPE"
        --change "ENV PIP_CERT=$CI_CA_PATH"
        --change "ENV SSL_CERT_FILE=$CI_CA_PATH"
        --change "ENV REQUESTS_CA_BUNDLE=$CI_CA_PATH"
    )
    local index extra
    index=$(pip_setting global.index-url)
    extra=$(pip_setting global.extra-index-url)
    [[ -n $index ]] && changes+=(--change "ENV PIP_INDEX_URL=$index")
    [[ -n $extra ]] && changes+=(--change "ENV PIP_EXTRA_INDEX_URL=$extra")

    tar -C "$ROOTFS" --numeric-owner -c . | docker import "${changes[@]}" \
        --message "edgetftp CI stand-in for debian:12-slim (debootstrap minbase bookworm)" - "$BUILDER_TAG"
    echo "build-base-images: tagged $BUILDER_TAG"
}

build_runtime_image() {
    docker build --network host --build-arg "BUILDER_BASE=$BUILDER_TAG" \
        --label "org.opencontainers.image.description=edgetftp CI stand-in for $RUNTIME_TAG" \
        --label "$RECIPE_LABEL=$RECIPE" \
        -t "$RUNTIME_TAG" "$HERE/standin"
    echo "build-base-images: tagged $RUNTIME_TAG"
}

if $force || ! image_is_current "$BUILDER_TAG"; then
    build_builder_image
fi
build_runtime_image
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^(${BUILDER_TAG%%:*}|${RUNTIME_TAG%%:*})"
