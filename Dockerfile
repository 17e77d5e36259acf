# edgetftp: a read-only TFTP server for network boot, in a distroless Python 3.11 image.
#
#   docker build -t edgetftp .
#   docker run --rm -p 69:69/udp edgetftp                       # serves the baked-in /srv/tftp
#   docker run --rm -p 69:69/udp -e EDGETFTP_SOURCE=s3://bucket/prefix/ edgetftp
#
# Both stages are Debian 12, so the venv built here (Debian's python3.11) runs unchanged on the
# distroless image's /usr/bin/python3.11: distroless needs "the exact same Python minor version".

FROM debian:12-slim AS builder

# Debian's python3 (3.11) + venv, Debian's iPXE builds (arch-independent package) to bake in, and
# binutils for `strip`.  Versions are left to the bookworm archive so security updates are picked up
# (hence DL3008).  None of this reaches the final image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends --no-install-suggests python3-venv ipxe binutils \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /venv

COPY pyproject.toml README.md constraints.txt /src/
COPY server /src/server
RUN /venv/bin/pip install --no-cache-dir --disable-pip-version-check --constraint /src/constraints.txt "/src[s3]"

# Cut what the running server never loads (image 139 MB -> 70 MB; the breakdown is in docs/deploy.md):
# - botocore ships the model of every AWS service (16 MB here); edgetftp calls S3 only, and the default
#   credential chain creates clients for sts (assume-role, web identity), sso + sso-oidc (IAM Identity
#   Center) and, in newer botocore, signin (`aws login`).  The top-level data files (endpoints,
#   partitions, retry and default configs) stay, gzipped (botocore's loader reads .json.gz), without
#   the examples (documentation only).  boto3's resource models: S3 only.
# - symbols of the wheels' extensions (uvloop's alone is 13 MB, 1.6 MB stripped);
# - pip, setuptools, the activate scripts, Cython sources, type stubs, dist-info beyond the metadata
#   headers (version lookups), pydantic.v1 and pydantic's mypy plugin, aiohttp's web server and test
#   helpers, the test helpers of uvloop and aioitertools, dateutil's bundled tz database (the image
#   has /usr/share/zoneinfo);
# - sources of the third-party packages: their byte code is compiled once here and kept beside them
#   (compileall -b), so imports stay as fast as with __pycache__ and the .py files go.  edgetftp's own
#   sources stay, with their __pycache__, for readable tracebacks.
WORKDIR /venv/lib/python3.11/site-packages
RUN site=/venv/lib/python3.11/site-packages \
    && find "$site/botocore/data" -mindepth 1 -maxdepth 1 -type d \
        ! -name s3 ! -name sts ! -name sso ! -name sso-oidc ! -name signin -exec rm -rf {} + \
    && find "$site/boto3/data" -mindepth 1 -maxdepth 1 -type d ! -name s3 -exec rm -rf {} + \
    && find "$site/botocore/data" -name 'examples-1.json' -delete \
    && find "$site/botocore/data" -name '*.json' -exec gzip -9 -n {} + \
    && find "$site" -name '*.so' -exec strip --strip-unneeded {} + \
    && /venv/bin/python3 -m pip uninstall --yes --disable-pip-version-check pip setuptools \
    && rm -f /venv/bin/activate* /venv/bin/Activate.ps1 \
    && rm -rf pydantic/v1 pydantic/mypy.py aioitertools/tests uvloop/_testbase.py \
        aiohttp/web*.py aiohttp/test_utils.py aiohttp/pytest_plugin.py aiohttp/worker.py \
        dateutil/zoneinfo/dateutil-zoneinfo.tar.gz \
    && find . \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' -o -name '*.pyi' -o -name '*.c' \
        -o -name '*.h' -o -name 'py.typed' \) -delete \
    && find . -path './*.dist-info/*' ! -name METADATA ! -name entry_points.txt ! -name top_level.txt \
        ! -type d -delete \
    && find . -path './*.dist-info/*' -type d -empty -delete \
    && for metadata in ./*.dist-info/METADATA; do sed -i '/^$/,$d' "$metadata"; done \
    && find . -name __pycache__ -type d -prune -exec rm -rf {} + \
    && /venv/bin/python3 -m compileall -q -b -j 0 -x '^\./edgetftp/' . \
    && find . -name '*.py' ! -path './edgetftp/*' -delete \
    && /venv/bin/python3 -m compileall -q ./edgetftp

# The content served by default: the iPXE binaries first, then content/ (a file there wins).
RUN mkdir -p /srv/tftp \
    && cp -L /usr/lib/ipxe/ipxe.efi /usr/lib/ipxe/snponly.efi /usr/lib/ipxe/undionly.kpxe \
        /usr/lib/ipxe/undionly.kkpxe /usr/lib/ipxe/ipxe.pxe /srv/tftp/
COPY content/ /srv/tftp/

# distroless :latest starts as root, which binding UDP 69 needs on Fly (no port remapping, ports below
# 1024 privileged in the VM).  EDGETFTP_USER makes the server bind its sockets, then switch to
# distroless's nonroot user (65532) before it reads a single datagram.  See docs/deploy.md.
# hadolint ignore=DL3007
FROM gcr.io/distroless/python3-debian12:latest

COPY --from=builder /venv /venv
COPY --from=builder /srv/tftp /srv/tftp

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EDGETFTP_LISTEN=0.0.0.0:69 \
    EDGETFTP_SOURCE=/srv/tftp \
    EDGETFTP_USER=65532:65532

EXPOSE 69/udp

# SIGTERM drains (running transfers get EDGETFTP_DRAIN_TIMEOUT, 8 s) and exits 0; fly.toml matches it.
STOPSIGNAL SIGTERM

ENTRYPOINT ["/venv/bin/python3", "-m", "edgetftp"]
