"""iPXE boot matrix: server x anticipation x one-way delay, measured in QEMU through the impairment relay.

For the client-compatibility and latency tables (issue 7).  Each cell is one real boot: iPXE loads
boot.ipxe, which fetches payload.bin; the relay adds the delay (and optional loss) to the TFTP traffic
only (DHCP is QEMU's own).  A cell is "ok" when the guest printed its marker *and* the relay saw the
payload's final ACK with the right sha256.

    python -m tests.ipxe.matrix --anticipate 0,8,16,32 --delay-ms 0,25 --payload-kib 1024
    python -m tests.ipxe.matrix --server tftpd-hpa --delay-ms 0,25
    python -m tests.ipxe.matrix --anticipate 8 --extra "--port-mode per-transfer" --loss 0.01 --json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.impairment import ImpairmentProxy
from tests.ipxe import qemu, servers
from tests.ipxe.wire import TransferLog


@dataclass
class Cell:
    server: str
    anticipate: int | None
    delay_ms: float
    loss: float
    ok: bool
    boot_seconds: float
    payload_seconds: float | None
    data_datagrams: int
    blocks: int
    note: str


def run_cell(server: str, anticipate: int | None, args: argparse.Namespace, delay_ms: float) -> Cell:
    with tempfile.TemporaryDirectory(prefix="ipxe-matrix-") as workdir:
        root = Path(workdir) / "root"
        root.mkdir()
        if server == "tftpd-hpa":
            factory = servers.tftpd_hpa(root, log_dir=Path(workdir))
        else:
            flags = ["--anticipate", str(anticipate), *shlex.split(args.extra)]
            factory = servers.edgetftp(root, flags, log_dir=Path(workdir))
        log = TransferLog()
        impairment = {"delay_ms": delay_ms, "loss": args.loss}
        with (
            factory as started,
            ImpairmentProxy.start_in_thread(started.address, seed=args.seed, tap=log, **impairment) as proxy,
        ):
            digest = qemu.write_boot_content(root, proxy.address[1], args.payload_kib * 1024)
            result = qemu.boot(proxy.address[1], timeout=args.timeout)
    done = [t for t in log.find("payload.bin") if t.complete]
    attempts = log.find("payload.bin")
    payload = done[-1] if done else (attempts[-1] if attempts else None)
    sha_ok = bool(done) and done[-1].sha256() == digest
    note = "" if result.succeeded else (result.failure or "timeout")
    if result.succeeded and not sha_ok:
        note = "payload sha256 mismatch on the wire"
    return Cell(
        server=server,
        anticipate=anticipate,
        delay_ms=delay_ms,
        loss=args.loss,
        ok=result.succeeded and sha_ok,
        boot_seconds=round(result.elapsed, 2),
        payload_seconds=None if payload is None or payload.duration is None else round(payload.duration, 3),
        data_datagrams=0 if payload is None else payload.data_datagrams,
        blocks=0 if payload is None else len(payload.blocks),
        note=note,
    )


def cells(args: argparse.Namespace) -> Iterator[tuple[str, int | None, float]]:
    for delay_ms in args.delay_ms:
        if args.server in ("edgetftp", "both"):
            for anticipate in args.anticipate:
                yield "edgetftp", anticipate, delay_ms
        if args.server in ("tftpd-hpa", "both"):
            yield "tftpd-hpa", None, delay_ms


def numbers(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.ipxe.matrix", description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=["edgetftp", "tftpd-hpa", "both"], default="edgetftp")
    parser.add_argument("--anticipate", type=lambda t: [int(n) for n in numbers(t)], default=[0, 8])
    parser.add_argument("--delay-ms", type=numbers, default=[0.0], help="one-way; RTT = 2x")
    parser.add_argument("--loss", type=float, default=0.0, help="loss each way on the TFTP path")
    parser.add_argument("--payload-kib", type=int, default=1024)
    parser.add_argument("--extra", default="", help="more edgetftp flags, one shell-quoted string")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per boot")
    parser.add_argument("--seed", default="0")
    parser.add_argument("--json", action="store_true", help="one JSON object per cell instead of a table")
    args = parser.parse_args(argv)
    if reason := qemu.unavailable_reason():
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    if not args.json:
        print("| server | anticipate | RTT ms | loss | ok | boot s | payload s | DATA sent / blocks | note |")
        print("|---|---|---|---|---|---|---|---|---|")
    failures = 0
    for server, anticipate, delay_ms in cells(args):
        cell = run_cell(server, anticipate, args, delay_ms)
        failures += not cell.ok
        if args.json:
            print(json.dumps(asdict(cell)), flush=True)
        else:
            shown_anticipate = "-" if anticipate is None else anticipate
            print(
                f"| {cell.server} | {shown_anticipate} | {2 * delay_ms:g} | {cell.loss:g} "
                f"| {'yes' if cell.ok else 'NO'} | {cell.boot_seconds} | {cell.payload_seconds} "
                f"| {cell.data_datagrams} / {cell.blocks} | {cell.note} |",
                flush=True,
            )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
