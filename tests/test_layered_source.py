"""Layered sources: a local directory over a real HTTP origin (and the other way round).

"Not found" falls through to the next layer; any other failure stops there unless
``--layer-errors-fall-through`` says otherwise.  Origin requests are counted at the origin.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from edgetftp.cli import build_source
from edgetftp.protocol import OptionAck
from edgetftp.settings import Settings, load_settings
from edgetftp.sources.base import AccessDenied, Content, FileNotFound, RequestContext, SourceUnavailable
from edgetftp.sources.http import HttpSource
from edgetftp.sources.layered import LayeredSource
from edgetftp.sources.local import LocalSource
from tests.conftest import ServerProcess
from tests.originsupport import Answer, OriginServer, with_source
from tests.rawclient import RawClient
from tests.test_clients import fetch_with

pytestmark = pytest.mark.integration


@pytest.fixture
def baked(tmp_path: Path) -> Path:
    root = tmp_path / "baked"
    root.mkdir()
    (root / "undionly.kpxe").write_bytes(b"K" * 70_000)
    (root / "shared.cfg").write_bytes(b"from the directory")
    os.mkfifo(root / "fifo.cfg")
    return root


def layered(*layers: str, **overrides: Any) -> LayeredSource:
    source = build_source(
        Settings(source=",".join(layers), origin_timeout=1.0, origin_attempts=1, **overrides)
    )
    assert isinstance(source, LayeredSource)
    return source


def ctx(name: str) -> RequestContext:
    return RequestContext(client=("192.0.2.7", 3000), filename=name)


def body(content: Content) -> bytes:
    assert content.memory is not None
    return bytes(content.memory)


def test_settings_build_the_layers_in_order(baked: Path, origin: OriginServer) -> None:
    settings = load_settings([f"{baked}, {origin.prefix()}"])
    source = build_source(settings)
    assert isinstance(source, LayeredSource)
    assert [type(layer) for layer in source.layers] == [LocalSource, HttpSource]
    assert source.description == f"{baked} over {origin.prefix()}"


def test_every_kind_of_layer_is_built_from_settings(
    baked: Path, origin: OriginServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgetftp.sources.s3 import S3Location, S3Source

    monkeypatch.setenv("EDGETFTP_SOURCE", f"{baked},s3://bucket/boot,{origin.prefix()}")
    source = build_source(load_settings([]))  # nothing touches the network before start()
    assert isinstance(source, LayeredSource)
    local, s3, http = source.layers
    assert isinstance(local, LocalSource) and isinstance(s3, S3Source) and isinstance(http, HttpSource)
    assert s3.location == S3Location("bucket", "boot/") and http.location.base == origin.prefix()
    assert not source.errors_fall_through


def test_first_layer_that_has_the_name_wins(baked: Path, origin: OriginServer) -> None:
    origin.files["/boot/shared.cfg"] = Answer(body=b"from the origin")
    origin.files["/boot/menu.ipxe"] = Answer(body=b"#!ipxe\n")
    source = layered(str(baked), origin.prefix())

    async def scenario() -> None:
        assert body(await source.open_for("undionly.kpxe", ctx("undionly.kpxe"))) == b"K" * 70_000
        assert body(await source.open_for("shared.cfg", ctx("shared.cfg"))) == b"from the directory"
        assert body(await source.open_for("menu.ipxe", ctx("menu.ipxe"))) == b"#!ipxe\n"
        with pytest.raises(FileNotFound):
            await source.open_for("nowhere.cfg", ctx("nowhere.cfg"))

    with_source(source, scenario)
    assert [r.raw_path for r in origin.logged()] == ["/boot/menu.ipxe", "/boot/nowhere.cfg"]
    assert origin.logged()[0].headers["X-TFTP-IP"] == "192.0.2.7"  # the context reaches the lower layer


def test_open_now_answers_from_memory_through_the_layers(baked: Path, origin: OriginServer) -> None:
    origin.files["/boot/menu.ipxe"] = Answer(body=b"#!ipxe\n", headers={"Cache-Control": "max-age=60"})
    source = layered(str(baked), origin.prefix())

    async def scenario() -> None:
        await source.open_for("undionly.kpxe", ctx("undionly.kpxe"))  # a cold local file is read off the loop
        assert body(source.open_now_for("undionly.kpxe", ctx("undionly.kpxe")) or _fail()) == b"K" * 70_000
        assert source.open_now_for("menu.ipxe", ctx("menu.ipxe")) is None  # the origin must be asked
        await source.open_for("menu.ipxe", ctx("menu.ipxe"))
        assert body(source.open_now_for("menu.ipxe", ctx("menu.ipxe")) or _fail()) == b"#!ipxe\n"
        assert origin.count("/boot/menu.ipxe") == 1

    with_source(source, scenario)


def _fail() -> Content:
    raise AssertionError("expected an answer from memory")


def test_an_error_does_not_fall_through(baked: Path, origin: OriginServer) -> None:
    origin.fail_status = 500
    over_local = layered(origin.prefix(), str(baked))

    async def scenario() -> None:
        with pytest.raises(SourceUnavailable):  # the origin is down: the directory's copy is NOT served
            await over_local.open_for("shared.cfg", ctx("shared.cfg"))

    with_source(over_local, scenario)
    local_first = layered(str(baked), origin.prefix())

    async def denied() -> None:
        with pytest.raises(AccessDenied):  # a FIFO in the directory: refused there, the origin not asked
            await local_first.open_for("fifo.cfg", ctx("fifo.cfg"))

    with_source(local_first, denied)
    assert origin.count("/boot/fifo.cfg") == 0


def test_errors_fall_through_when_asked(baked: Path, origin: OriginServer) -> None:
    origin.stop()
    try:
        source = layered(origin.prefix(), str(baked), layer_errors_fall_through=True)

        async def scenario() -> None:
            assert source.open_now_for("shared.cfg", ctx("shared.cfg")) is None
            assert body(await source.open_for("shared.cfg", ctx("shared.cfg"))) == b"from the directory"
            with pytest.raises(SourceUnavailable):  # nowhere below either: the failure, not "not found"
                await source.open_for("nowhere.cfg", ctx("nowhere.cfg"))

        with_source(source, scenario)
    finally:
        origin.start()


def test_real_server_serves_both_layers_with_tsize(baked: Path, origin: OriginServer, tmp_path: Path) -> None:
    origin.files["/boot/menu.ipxe"] = Answer(body=b"#!ipxe\necho hi\n" * 100)
    server = ServerProcess([f"{baked},{origin.prefix()}"])
    try:
        for name, size in (("undionly.kpxe", 70_000), ("menu.ipxe", 1500)):
            with RawClient(server.address, timeout=10) as client:
                client.rrq(name, tsize=0, blksize=1468)  # a size probe, then ERROR 8
                packet, address = client.receive()
                assert isinstance(packet, OptionAck) and packet.options["tsize"] == str(size), name
                client.abort(address)
            out = tmp_path / name
            assert fetch_with("atftp", server.address, name, out, 1428).returncode == 0
            assert out.stat().st_size == size
        with RawClient(server.address, timeout=10) as client:
            missing = client.fetch("nowhere.cfg", tsize=0)
        assert missing.error is not None and missing.error.code == 1
    finally:
        server.stop()
    assert origin.count("/boot/undionly.kpxe") == 0
    assert origin.count("/boot/menu.ipxe") == 2  # probe and download (not cacheable: no lifetime)
