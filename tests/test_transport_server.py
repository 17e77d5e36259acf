"""The transport in-process: a real loop and real loopback sockets, no subprocess.  Every behaviour
of the listener, the demultiplexer, the session driver and the sender, end to end."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import resource
import socket
import time
from collections.abc import Awaitable, Callable

import pytest

from edgetftp.protocol import Data, Error, ErrorCode, OptionAck, Packet
from edgetftp.protocol.codes import Opcode
from edgetftp.protocol.packets import encode_ack, encode_request
from edgetftp.protocol.transfer import TransferConfig
from edgetftp.transport import PortMode, ServerConfig
from tests.rawclient import RawClient
from tests.transport_harness import MemorySource, fetch, running_server, wait_until

pytestmark = pytest.mark.unit

RNG = random.Random(1350)
FILES = {
    "big.bin": RNG.randbytes(2**20),
    "s513.bin": RNG.randbytes(513),
    "window.bin": RNG.randbytes(300 * 1024 + 17),
}


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_resident_files_lock_step_and_windowed() -> None:
    async def body() -> None:
        async with running_server(MemorySource(FILES)) as (server, observer):
            address = server.local_addresses[0]
            lock_step = await fetch(address, "big.bin", blksize=1428)
            windowed = await fetch(address, "window.bin", blksize=1428, windowsize=32)  # GSO sends
            assert sha(lock_step.data) == sha(FILES["big.bin"])
            assert sha(windowed.data) == sha(FILES["window.bin"])
            await wait_until(lambda: len(observer.ended) == 2)
            assert observer.outcomes() == ["completed", "completed"]
            assert server.active_sessions == 0

    run(body)


def test_streamed_files_are_fed_as_the_transfer_asks() -> None:
    async def body() -> None:
        source = MemorySource(FILES, streamed=["big.bin"])
        async with running_server(source) as (server, observer):
            result = await fetch(server.local_addresses[0], "big.bin", blksize=1428, windowsize=8)
            assert sha(result.data) == sha(FILES["big.bin"])
            await wait_until(lambda: len(observer.ended) == 1)
        reads = source.opened[0].reads
        assert len(reads) > 1 and reads[0][0] == 0  # piece by piece, from the start
        assert [offset for offset, _ in reads] == sorted({offset for offset, _ in reads})

    run(body)


def test_missing_file_write_request_and_junk() -> None:
    async def body() -> None:
        async with running_server(MemorySource(FILES)) as (server, observer):
            address = server.local_addresses[0]
            missing = await fetch(address, "missing.efi", tsize=0)
            assert missing.error == Error(ErrorCode.FILE_NOT_FOUND, "File not found")

            def write_and_junk() -> object:
                with RawClient(address) as client:
                    client.send(encode_request(Opcode.WRQ, "up.bin"))
                    reply = client.receive()[0]
                    client.send(encode_ack(3))  # no session: dropped, no answer
                    client.send(b"\xff")
                    return reply, client.receive_or_none(0.3)

            assert await asyncio.to_thread(write_and_junk) == (
                Error(ErrorCode.ACCESS_VIOLATION, "Server is read-only"),
                None,
            )
            assert observer.dropped.count("no-session") == 2
            assert [reason for _, reason in observer.refused] == ["write-request"]

    run(body)


def test_a_repeated_request_draws_the_first_reply_again_not_a_second_session() -> None:
    async def body() -> None:
        config = ServerConfig(transfer=TransferConfig(timeout=2.0, min_timeout=0.05))
        async with running_server(MemorySource(FILES), config) as (server, observer):

            def client_side() -> list[object]:
                with RawClient(server.local_addresses[0]) as client:
                    client.rrq("big.bin", blksize=1428)
                    first = client.receive()[0]
                    time.sleep(0.1)  # later than a network duplicate (min_timeout), as a client's resend
                    client.rrq("big.bin", blksize=1428)  # our OACK "was lost": the client resends
                    again = client.receive()[0]
                    client.rrq("s513.bin")  # a different request: the old session is replaced
                    replaced = client.receive()[0]
                    return [first, again, replaced]

            first, again, replaced = await asyncio.to_thread(client_side)
            assert first == again == OptionAck({"blksize": "1428"})
            assert isinstance(replaced, Data) and replaced.block == 1
            await wait_until(lambda: len(observer.ended) == 1)
            assert observer.ended[0][1].reason == "replaced by a new request"
            assert server.active_sessions == 1

    run(body)


def test_sessions_are_keyed_by_listener_and_client_address() -> None:
    """One client port talking to two listeners of one server has two independent transfers."""

    async def body() -> None:
        async with running_server(MemorySource(FILES), hosts=["127.0.0.1", "127.0.0.1"]) as (
            server,
            observer,
        ):
            first, second = server.local_addresses

            def interleaved() -> tuple[bytes, bytes]:
                with RawClient(first) as client:
                    client.rrq("s513.bin")
                    client.send(encode_request(Opcode.RRQ, "s513.bin"), second)
                    got: dict[tuple[str, int], list[bytes]] = {first: [], second: []}
                    while sum(len(chunks) for chunks in got.values()) < 4:
                        packet, address = client.receive()
                        assert isinstance(packet, Data)
                        got[address].append(packet.payload)
                        client.ack(packet.block, address)
                    return b"".join(got[first]), b"".join(got[second])

            from_first, from_second = await asyncio.to_thread(interleaved)
            assert from_first == from_second == FILES["s513.bin"]
            await wait_until(lambda: len(observer.ended) == 2)
            assert observer.outcomes() == ["completed", "completed"]

    run(body)


def test_ipv4_and_ipv6_listeners_in_one_server() -> None:
    async def body() -> None:
        async with running_server(MemorySource(FILES), hosts=["127.0.0.1", "::1"]) as (server, _):
            v4, v6 = server.local_addresses
            results = await asyncio.gather(
                fetch(v4, "big.bin", blksize=1468), fetch(v6, "big.bin", blksize=1468, windowsize=16)
            )
            assert all(sha(result.data) == sha(FILES["big.bin"]) for result in results)
            assert results[0].reply_addresses == {v4}
            assert {address[:2] for address in results[1].reply_addresses} == {v6}

    try:
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()
    except OSError:
        pytest.skip("no IPv6 here")
    run(body)


@pytest.mark.parametrize("windowsize", [1, 16])
def test_a_wildcard_listener_answers_from_the_address_it_was_asked_on(windowsize: int) -> None:
    """IP_PKTINFO on the lock-step path and with GSO windows."""

    async def body() -> None:
        async with running_server(MemorySource(FILES), hosts=["0.0.0.0"]) as (server, _):
            port = server.local_addresses[0][1]
            result = await fetch(("127.0.0.5", port), "window.bin", blksize=1428, windowsize=windowsize)
            assert result.reply_addresses == {("127.0.0.5", port)}
            assert sha(result.data) == sha(FILES["window.bin"])

    run(body)


def test_blksize_is_clamped_to_the_configured_mtu() -> None:
    async def body() -> None:
        async with running_server(MemorySource(FILES), ServerConfig(mtu=1300)) as (server, _):
            result = await fetch(server.local_addresses[0], "big.bin", blksize=1468)
            assert result.oack == {"blksize": "1268"}  # 1300 - 20 - 8 - 4

    run(body)


def test_per_transfer_mode_fresh_port_and_unknown_tid() -> None:
    async def body() -> None:
        config = ServerConfig(port_mode=PortMode.PER_TRANSFER)
        async with running_server(MemorySource(FILES), config) as (server, observer):
            address = server.local_addresses[0]

            def client_side() -> tuple[object, tuple[str, int], bytes]:
                with RawClient(address) as client, RawClient(address) as stranger:
                    client.rrq("s513.bin")
                    first, transfer_address = client.receive()
                    stranger.ack(1, transfer_address)
                    reply = stranger.receive()[0]
                    assert isinstance(first, Data)
                    client.ack(1, transfer_address)
                    second = client.receive()[0]
                    assert isinstance(second, Data)
                    client.ack(2, transfer_address)
                    return reply, transfer_address, first.payload + second.payload

            reply, transfer_address, data = await asyncio.to_thread(client_side)
            assert reply == Error(ErrorCode.UNKNOWN_TID, "Unknown transfer ID")
            assert transfer_address[1] != address[1] and data == FILES["s513.bin"]
            await wait_until(lambda: observer.outcomes() == ["completed"])
            assert "unknown-tid" in observer.dropped

    run(body)


def test_per_transfer_mode_out_of_descriptors_answers_busy_and_reports_once() -> None:
    """EMFILE on the transfer's socket: ERROR 0 busy per request, one report, no traceback."""

    async def body() -> None:
        config = ServerConfig(port_mode=PortMode.PER_TRANSFER)
        async with running_server(MemorySource(FILES), config) as (server, observer):
            with RawClient(server.local_addresses[0]) as client:
                soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                lowest_free = os.dup(0)  # the kernel hands out the lowest free number
                os.close(lowest_free)
                resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no new descriptor
                try:
                    replies: list[Packet] = []
                    for _ in range(5):
                        client.rrq("s513.bin")
                        await wait_until(lambda: len(observer.refused) > len(replies))
                        replies.append(client.receive()[0])
                finally:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            assert set(replies) == {Error(ErrorCode.NOT_DEFINED, "Server busy, try again later")}
            assert [reason for _, reason in observer.refused] == ["no-descriptors"] * 5
            assert len(observer.exhausted) == 1 and observer.exhausted[0][0] == "descriptors"
            assert server.active_sessions == 0
            result = await fetch(server.local_addresses[0], "s513.bin")  # descriptors back: served
            assert result.data == FILES["s513.bin"]

    run(body)


def test_drain_refuses_new_requests_silently_and_aborts_stalled_transfers() -> None:
    async def body() -> None:
        async with running_server(MemorySource(FILES)) as (server, observer):
            address = server.local_addresses[0]
            with RawClient(address) as stalled, RawClient(address) as late:
                stalled.rrq("big.bin")
                assert isinstance((await asyncio.to_thread(stalled.receive))[0], Data)
                server.begin_drain()
                late.rrq("s513.bin")
                assert await asyncio.to_thread(late.receive_or_none, 0.3) is None
                assert await server.drain(0.2) == 1
                packet = (await asyncio.to_thread(stalled.receive))[0]
            assert packet == Error(ErrorCode.NOT_DEFINED, "Server shutting down")
            assert "draining" in observer.dropped and server.active_sessions == 0

    run(body)
