"""iPXE in QEMU as a boot-time benchmark client: SeaBIOS (tests/ipxe) and OVMF/UEFI (tests/test_uefi_pxe).

The time of a cell is the payload's transfer as the relay saw it: from iPXE's first RRQ for the file
to its ACK of the last block.  The sha256 is that of the blocks the relay saw the server send (the
guest has no disk to write to); the guest's own marker says iPXE accepted the image.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.boottime_model import Run
from bench.impairment import ImpairmentProxy
from tests.ipxe import qemu
from tests.ipxe.wire import ObservedTransfer, TransferLog

BIOS_BOOT_OVERHEAD_S = 30.0  # SeaBIOS, iPXE's DHCP and boot.ipxe under TCG, on top of the payload's cap
UEFI_BOOT_OVERHEAD_S = 120.0  # OVMF under TCG, two DHCP rounds and ipxe.efi (windowsize 4)
FINAL_ACK_GRACE_S = 5.0


def bios_unavailable() -> str | None:
    return qemu.unavailable_reason()


def uefi_unavailable() -> str | None:
    from tests import test_uefi_pxe  # imports pytest; only needed when UEFI cells run

    return test_uefi_pxe.unavailable_reason()


def write_bios_script(root: Path, relay_port: int, filename: str) -> None:
    """boot.ipxe that fetches ``filename`` through the relay; the markers are the harness's own."""
    script = "\n".join(
        [
            "#!ipxe",
            f"echo {qemu.SCRIPT_LOADED}",
            f"imgfetch tftp://{qemu.GUEST_HOST_ADDRESS}:{relay_port}/{filename}",
            f"echo {qemu.PAYLOAD_FETCHED}",
            "sleep 600",
            "",
        ]
    )
    path = root / "boot.ipxe"
    path.write_text(script)
    path.chmod(0o644)


def run_ipxe_bios(
    upstream: tuple[str, int],
    root: Path,
    filename: str,
    expected_sha256: str,
    rtt_ms: float,
    loss: float,
    seed: str,
    cap_s: float,
) -> Run:
    """One SeaBIOS iPXE boot that fetches ``filename``; only one runs at a time (boot.ipxe is shared)."""
    log = TransferLog()
    relay = ImpairmentProxy.start_in_thread(upstream, delay_ms=rtt_ms / 2, loss=loss, seed=seed, tap=log)
    try:
        write_bios_script(root, relay.address[1], filename)
        result = qemu.boot(relay.address[1], timeout=cap_s + BIOS_BOOT_OVERHEAD_S)
        if result.succeeded:
            log.wait_for_complete(filename, FINAL_ACK_GRACE_S)
    finally:
        relay.stop()
    failure = "" if result.succeeded else (result.failure or "no marker within the cap")
    return wire_run(log.find(filename), expected_sha256, failure, cap_s, result.timed_out)


def run_ipxe_uefi(
    edgetftp_flags: tuple[str, ...], size_bytes: int, rtt_ms: float, loss: float, seed: str, cap_s: float
) -> Run:
    """One OVMF boot (EDK II loads ipxe.efi, iPXE fetches payload.bin) in a namespace of its own."""
    from tests import test_uefi_pxe

    with tempfile.TemporaryDirectory(prefix="boottime-uefi-") as workdir:
        boot, content = test_uefi_pxe.boot_uefi(
            Path(workdir),
            edgetftp_flags,
            delay_ms=rtt_ms / 2,
            loss=loss,
            payload_bytes=size_bytes,
            seed=seed,
            timeout=cap_s + UEFI_BOOT_OVERHEAD_S,
        )
    payload = [t for t in boot.transfers if t.filename.lstrip("/") == "payload.bin"]
    failure = "" if boot.succeeded else (boot.failure or "no marker")
    run = wire_run(payload, content.sha256["payload.bin"], failure, cap_s, boot.failure == "timeout")
    nbp = boot.complete("ipxe.efi")
    if nbp:
        run.extra = {
            "nbp_seconds": nbp[0].duration,
            "nbp_options": nbp[0].options,
            "nbp_oack": nbp[0].oack,
            "nbp_data_datagrams": nbp[0].data_datagrams,
            "nbp_blocks": len(nbp[0].blocks),
            "boot_seconds": boot.elapsed,
        }
    return run


def wire_run(
    attempts: list[ObservedTransfer], expected_sha256: str, failure: str, cap_s: float, timed_out: bool
) -> Run:
    """A Run from the relay's view of the file's transfers (the last complete one, else the last try)."""
    done = [t for t in attempts if t.complete]
    transfer = done[-1] if done else (attempts[-1] if attempts else None)
    if transfer is None:
        return Run(False, None, capped=timed_out, note=failure or "no RRQ reached the relay")
    sha_ok = bool(done) and transfer.sha256() == expected_sha256
    seconds = transfer.duration
    capped = timed_out or (seconds is not None and seconds > cap_s)
    note = failure
    if not failure and not sha_ok:
        note = "wrong sha256 on the wire" if done else "final ACK never seen"
    return Run(
        ok=not failure and sha_ok and not capped,
        seconds=seconds,
        capped=capped,
        note=note,
        data_datagrams=transfer.data_datagrams,
        blocks=len(transfer.blocks),
    )
