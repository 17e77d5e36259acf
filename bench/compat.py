"""Client compatibility with anticipation (issue 7): real TFTP clients x ``--anticipate N``, delayed path.

Each cell is one fetch of a 1 MiB file by a real client program (curl, atftp, tftp-hpa, busybox) from
edgetftp started with ``--anticipate N``, through the impairment relay on loopback with a fixed one-way
delay (25 ms: RTT 50 ms) and optional loss.  None of these clients asks for a windowsize, so with
N > 0 the server sends up to N blocks ahead of the client's last ACK.  A cell passes when the client
exits 0 and the file it wrote has the right sha256.  Its time is the client's wall time.

    python -m bench.compat                       # every client x 0/8/16/32, loss 0 and 1% (~20 min)
    python -m bench.compat --clients atftp,busybox --anticipate 16 --loss 0 --json out.json

iPXE is measured by ``python -m tests.ipxe.matrix`` and UEFI PXE by ``python -m tests.test_uefi_pxe``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.impairment import ImpairmentProxy
from bench.latency import Content, Mode, start_servers, stop_servers, write_content
from bench.peers import ServerProcess

FILE_KIB = 1024
DEFAULT_DELAY_MS = 25.0
DEFAULT_ANTICIPATIONS = (0, 8, 16, 32)
DEFAULT_LOSSES = (0.0, 0.01)
CLIENT_TIME_LIMIT = 400.0  # seconds: a 512-byte lock-step client needs ~105 s at RTT 50 ms, more with loss


@dataclass(frozen=True)
class Client:
    """A real TFTP client program and how it is told to fetch one file."""

    key: str
    label: str
    executable: str
    blksize: int  # the block size it transfers with against edgetftp (asked for, or 512)
    options: str  # what it asks for, for the table

    def command(self, host: str, port: int, remote: str, local: Path) -> list[str]:
        if self.key.startswith("curl"):
            extra = {
                "curl": [],
                "curl-1432": ["--tftp-blksize", "1432"],
                "curl-no-options": ["--tftp-no-options"],
            }
            url = f"tftp://{host}:{port}/{remote}"
            return [self.executable, "--silent", "--show-error", *extra[self.key], "-o", str(local), url]
        if self.key == "atftp":
            return [
                self.executable,
                "--get",
                "-r",
                remote,
                "-l",
                str(local),
                "--option",
                "blksize 1432",
                host,
                str(port),
            ]
        if self.key == "tftp-hpa":
            return [self.executable, host, str(port), "-m", "binary", "-c", "get", remote, str(local)]
        if self.key == "busybox":
            return [
                self.executable,
                "tftp",
                "-g",
                "-r",
                remote,
                "-l",
                str(local),
                "-b",
                "1432",
                host,
                str(port),
            ]
        raise ValueError(f"unknown client {self.key}")

    def unavailable(self) -> str | None:
        return None if shutil.which(self.executable) else f"{self.executable} is not installed"


CLIENTS = (
    Client("curl", "curl 7.88 (defaults)", "curl", 512, "tsize, blksize 512, timeout"),
    Client("curl-no-options", "curl --tftp-no-options", "curl", 512, "none (RFC 1350)"),
    Client("atftp", "atftp 0.8 --option 'blksize 1432'", "atftp", 1432, "blksize 1432"),
    Client("tftp-hpa", "tftp-hpa 5.2 client", "tftp", 512, "none (RFC 1350)"),
    Client("busybox", "busybox 1.35 tftp -b 1432", "busybox", 1432, "blksize 1432"),
    Client("curl-1432", "curl --tftp-blksize 1432", "curl", 1432, "tsize, blksize 1432, timeout"),
)
CLIENTS_BY_KEY = {client.key: client for client in CLIENTS}


@dataclass
class Outcome:
    client: str
    anticipate: int
    delay_ms: float
    loss: float
    ok: bool  # exit 0 and the right sha256
    seconds: float
    returncode: int | None
    sha256_ok: bool
    server_datagrams: int
    client_datagrams: int
    note: str


def run_cell(
    client: Client,
    server: ServerProcess,
    anticipate: int,
    content: Content,
    filename: str,
    delay_ms: float,
    loss: float,
    workdir: Path,
    seed: str = "0",
    time_limit: float = CLIENT_TIME_LIMIT,
) -> Outcome:
    """One fetch by ``client`` through a fresh relay; the output file's sha256 is checked."""
    local = workdir / f"{client.key}-{anticipate}-{loss:g}-{time.monotonic_ns()}.out"
    relay = ImpairmentProxy.start_in_thread(server.address, delay_ms=delay_ms, loss=loss, seed=seed)
    returncode: int | None = None
    note = ""
    try:
        host, port = relay.address
        command = client.command(host, port, filename, local)
        started = time.monotonic()
        try:
            finished = subprocess.run(
                command, capture_output=True, timeout=time_limit, check=False, cwd=workdir
            )
            returncode = finished.returncode
            note = _last_line(finished.stderr or finished.stdout)
        except subprocess.TimeoutExpired:
            note = f"no exit within {time_limit:g} s"
        seconds = time.monotonic() - started
        stats = relay.stats()
    finally:
        relay.stop()
    digest = hashlib.sha256(local.read_bytes()).hexdigest() if local.exists() else ""
    local.unlink(missing_ok=True)
    sha_ok = digest == content.sha256[filename]
    if returncode == 0 and not sha_ok:
        note = "exit 0 but wrong sha256" if digest else "exit 0 but no file"
    return Outcome(
        client=client.key,
        anticipate=anticipate,
        delay_ms=delay_ms,
        loss=loss,
        ok=returncode == 0 and sha_ok,
        seconds=seconds,
        returncode=returncode,
        sha256_ok=sha_ok,
        server_datagrams=stats.to_client.received,
        client_datagrams=stats.to_server.received,
        note=note,
    )


def _last_line(output: bytes) -> str:
    lines = [line.strip() for line in output.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1][:120] if lines else ""


def anticipation_modes(anticipations: Sequence[int]) -> list[Mode]:
    return [
        Mode(f"anticipate-{n}", f"edgetftp anticipate {n}", "edgetftp", anticipate=n) for n in anticipations
    ]


# --- report -----------------------------------------------------------------------------------------------


def format_outcome(outcome: Outcome | None) -> str:
    if outcome is None:
        return "\u2013"
    if outcome.ok:
        return f"\u2713 {outcome.seconds:.1f} s"
    return f"\u2717 ({outcome.note or f'exit {outcome.returncode}'})"


def render_table(
    clients: Sequence[Client], anticipations: Sequence[int], outcomes: Sequence[Outcome], loss: float
) -> str:
    header = ["client", "options asked", "blksize", *(f"anticipate {n}" for n in anticipations)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for client in clients:
        row = [client.label, client.options, str(client.blksize)]
        for anticipate in anticipations:
            found = [
                o for o in outcomes if (o.client, o.anticipate, o.loss) == (client.key, anticipate, loss)
            ]
            row.append(format_outcome(found[0] if found else None))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def render_report(
    clients: Sequence[Client],
    anticipations: Sequence[int],
    losses: Sequence[float],
    delay_ms: float,
    outcomes: Sequence[Outcome],
    skipped: Sequence[str],
    file_kib: int = FILE_KIB,
) -> str:
    parts = []
    for loss in losses:
        parts += [
            f"{file_kib} KiB file, one-way delay {delay_ms:g} ms (RTT {2 * delay_ms:g} ms), "
            f"loss {loss:g} each way; "
            "\u2713 = exit 0 and sha256 right, with the client's wall time:",
            "",
            render_table(clients, anticipations, outcomes, loss),
            "",
        ]
    parts += [f"Not run: {reason}" for reason in skipped]
    return "\n".join(parts).rstrip() + "\n"


# --- CLI --------------------------------------------------------------------------------------------------


def _integers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _numbers(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.compat", description=__doc__.splitlines()[0])
    keys = ",".join(CLIENTS_BY_KEY)
    parser.add_argument("--clients", default=",".join(c.key for c in CLIENTS), help=f"some of {keys}")
    parser.add_argument("--anticipate", type=_integers, default=list(DEFAULT_ANTICIPATIONS))
    parser.add_argument(
        "--loss", type=_numbers, default=list(DEFAULT_LOSSES), help="loss each way, e.g. 0,0.01"
    )
    parser.add_argument("--delay-ms", type=float, default=DEFAULT_DELAY_MS, help="one-way delay")
    parser.add_argument("--file-kib", type=int, default=FILE_KIB)
    parser.add_argument("--seed", default="0")
    parser.add_argument("--json", type=Path, help="write every outcome here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    clients, skipped = [], []
    for key in args.clients.split(","):
        client = CLIENTS_BY_KEY[key.strip()]
        reason = client.unavailable()
        if reason:
            skipped.append(f"{client.label} ({reason})")
        else:
            clients.append(client)
    workdir = Path(tempfile.mkdtemp(prefix="edgetftp-compat-"))
    outcomes: list[Outcome] = []
    try:
        content = write_content(workdir / "root", [args.file_kib])
        filename = Content.file_name(args.file_kib)
        servers = start_servers(anticipation_modes(args.anticipate), content, workdir / "logs")
        try:
            for loss in args.loss:
                for client in clients:
                    for anticipate in args.anticipate:
                        server = servers[f"edgetftp:{anticipate}"]
                        seed = f"{args.seed}:{client.key}:{anticipate}:{loss}"
                        outcome = run_cell(
                            client, server, anticipate, content, filename, args.delay_ms, loss, workdir, seed
                        )
                        outcomes.append(outcome)
                        print(json.dumps(asdict(outcome)), file=sys.stderr, flush=True)
        finally:
            stop_servers(servers)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = render_report(
        clients, args.anticipate, args.loss, args.delay_ms, outcomes, skipped, args.file_kib
    )
    sys.stdout.write(report)
    if args.json:
        args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=2))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
