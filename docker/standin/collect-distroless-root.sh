#!/usr/bin/env bash
# Assemble a distroless-like root file system in $1 from the Debian packages installed here.
#
# The package list follows GoogleContainerTools/distroless for python3-debian12 (base + cc + python
# layers): the C runtime, OpenSSL, Python 3.11 with its shared libraries, and the data a program
# expects (CA bundle, time zones, /etc/services).  Only the packages' files are taken, never their
# maintainer scripts, so no shell, coreutils, apt or dpkg end up in the image.
set -euo pipefail

out=$1
packages=(
    # base / cc
    libc6 libssl3 libgcc-s1 libgomp1 libstdc++6 netbase tzdata
    # python
    libbz2-1.0 libdb5.3 libexpat1 liblzma5 libsqlite3-0 libuuid1 libncursesw6 libtinfo6
    python3-distutils zlib1g libcom-err2 libcrypt1 libgssapi-krb5-2 libk5crypto3 libkeyutils1
    libkrb5-3 libkrb5support0 libnsl2 libreadline8 libtirpc3 libffi8
    libpython3.11-minimal libpython3.11-stdlib python3.11-minimal
)

# Copy one path, writing it under its canonical directory: bookworm packages still list /lib/...
# while /lib is a symlink to usr/lib (merged /usr), and the image keeps those top-level symlinks.
copy_path() {
    local path=$1 dir
    dir=$(readlink -f "$(dirname "$path")")
    mkdir -p "$out$dir"
    cp -a "$path" "$out$dir/"
}

mkdir -p "$out/usr/bin" "$out/usr/lib" "$out/usr/lib64" "$out/usr/sbin"
for link in bin lib lib64 sbin; do
    ln -sfn "usr/$link" "$out/$link"
done

for package in "${packages[@]}"; do
    dpkg-query -L "$package" | while read -r path; do
        case $path in
            /usr/share/doc/* | /usr/share/man/* | /usr/share/lintian/* | /usr/share/info/*) continue ;;
        esac
        if [[ -L $path || -f $path ]]; then
            copy_path "$path"
        fi
    done
done

# The same absolute aliases distroless adds; a venv made by Debian's python3 points at /usr/bin/python3.
ln -sfn /usr/bin/python3.11 "$out/usr/bin/python3"
ln -sfn /usr/bin/python3.11 "$out/usr/bin/python"

mkdir -p "$out/etc/ssl/certs"
cp /etc/ssl/certs/ca-certificates.crt "$out/etc/ssl/certs/"
cp -a /usr/lib/os-release "$out/usr/lib/os-release"
ln -sfn ../usr/lib/os-release "$out/etc/os-release"

# Users as in distroless: root, nobody and nonroot (65532).
cat >"$out/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat >"$out/etc/group" <<'GROUP'
root:x:0:
nobody:x:65534:
tty:x:5:
staff:x:50:
nonroot:x:65532:
GROUP
printf 'passwd: files\ngroup: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n' \
    >"$out/etc/nsswitch.conf"

install -d -m 1777 "$out/tmp"
install -d -m 0700 "$out/root"
install -d -m 0700 -o 65532 -g 65532 "$out/home/nonroot"
install -d -m 0755 "$out/var/lib" "$out/run"

# A distroless image has no shell and no busybox: fail the build if one slipped in.
for shell in bin/sh bin/bash bin/dash bin/busybox usr/bin/sh usr/bin/bash usr/bin/dash usr/bin/busybox; do
    if [[ -e $out/$shell || -L $out/$shell ]]; then
        echo "collect: $shell must not be in the image" >&2
        exit 1
    fi
done
