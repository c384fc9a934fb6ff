"""PullReader's protocol logic (qasino/nats/bridge.py) against an in-memory
stand-in for the nats-py connection: which pull requests it sends, and
which replies end a fetch. The real thing runs in tests/nats/test_*.py
against a 3-node cluster."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, Optional

from qasino.nats.bridge import PullReader

INBOX = "_INBOX.test"


class FakeNats:
    """subscribe/publish/new_inbox, with the messages delivered by hand."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any], str]] = []
        self.callback: Optional[Callable[[Any], Awaitable[None]]] = None
        self.asked = asyncio.Event()

    def new_inbox(self) -> str:
        return INBOX

    async def subscribe(self, subject: str, cb: Callable[[Any], Awaitable[None]]) -> Any:
        assert subject == INBOX + ".*"
        self.callback = cb

        async def unsubscribe() -> None:
            self.callback = None

        return SimpleNamespace(unsubscribe=unsubscribe)

    async def publish(self, subject: str, data: bytes, reply: str) -> None:
        self.requests.append((subject, json.loads(data), reply))
        self.asked.set()

    async def deliver(self, request: int, seq: int) -> None:
        assert self.callback is not None
        await self.callback(
            SimpleNamespace(
                subject=f"{INBOX}.{request}",
                data=b"{}",
                headers=None,
                reply=f"$JS.ACK.QASINO.c.1.{seq}.{seq}.0.0",
            )
        )

    async def status(self, request: int, code: str) -> None:
        assert self.callback is not None
        await self.callback(
            SimpleNamespace(
                subject=f"{INBOX}.{request}", data=b"", headers={"Status": code}, reply=""
            )
        )

    async def next_request(self) -> tuple[str, dict[str, Any], str]:
        await asyncio.wait_for(self.asked.wait(), 2)
        self.asked.clear()
        return self.requests[-1]


def seqs(msgs: list[Any]) -> list[int]:
    return [int(m.reply.split(".")[5]) for m in msgs]


async def reader() -> tuple[FakeNats, PullReader]:
    nc = FakeNats()
    r = PullReader(nc, "QASINO", "c")
    await r.start()
    return nc, r


def test_a_fetch_asks_for_what_is_there_and_ends_on_a_full_batch() -> None:
    async def run() -> None:
        nc, r = await reader()
        fetch = asyncio.ensure_future(r.fetch(3, 5.0))
        subject, body, reply = await nc.next_request()
        assert subject == "$JS.API.CONSUMER.MSG.NEXT.QASINO.c"
        assert body == {"batch": 3, "no_wait": True} and reply == f"{INBOX}.1"
        for seq in (1, 2, 3):
            await nc.deliver(1, seq)
        assert seqs(await asyncio.wait_for(fetch, 1)) == [1, 2, 3]
        assert len(nc.requests) == 1

    asyncio.run(run())


def test_the_404_of_its_own_request_ends_a_short_batch() -> None:
    async def run() -> None:
        nc, r = await reader()
        fetch = asyncio.ensure_future(r.fetch(10, 5.0))
        await nc.next_request()
        await nc.deliver(1, 7)
        await nc.status(1, "100")  # an idle heartbeat ends nothing
        await asyncio.sleep(0.05)
        assert not fetch.done()
        await nc.status(1, "404")
        assert seqs(await asyncio.wait_for(fetch, 1)) == [7]

    asyncio.run(run())


def test_with_nothing_there_it_waits_with_expires_and_returns_at_the_first_message() -> None:
    async def run() -> None:
        nc, r = await reader()
        fetch = asyncio.ensure_future(r.fetch(10, 5.0))
        await nc.next_request()
        await nc.status(1, "404")
        _, body, reply = await nc.next_request()
        assert body == {"batch": 10, "expires": 5_000_000_000} and reply == f"{INBOX}.2"
        # A status left over from the first request does not end this fetch.
        await nc.status(1, "408")
        await asyncio.sleep(0.05)
        assert not fetch.done()
        await nc.deliver(2, 8)
        assert seqs(await asyncio.wait_for(fetch, 1)) == [8]
        # The lingering request's later messages wait for the next fetch,
        # which returns them without asking again.
        await nc.deliver(2, 9)
        await nc.deliver(2, 10)
        assert seqs(await r.fetch(10, 5.0)) == [9, 10]
        assert len(nc.requests) == 2

    asyncio.run(run())


def test_nothing_at_all_gives_an_empty_fetch_after_the_timeout() -> None:
    async def run() -> None:
        nc, r = await reader()
        fetch = asyncio.ensure_future(r.fetch(10, 0.1))
        await nc.next_request()
        await nc.status(1, "404")
        await nc.next_request()
        assert await asyncio.wait_for(fetch, 2) == []

    asyncio.run(run())


def test_more_than_a_batch_waiting_is_returned_a_batch_at_a_time_in_order() -> None:
    async def run() -> None:
        nc, r = await reader()
        fetch = asyncio.ensure_future(r.fetch(2, 5.0))
        await nc.next_request()
        for seq in (1, 2, 3):  # a lingering request of before delivers too
            await nc.deliver(1, seq)
        assert seqs(await asyncio.wait_for(fetch, 1)) == [1, 2]
        assert seqs(await r.fetch(2, 5.0)) == [3]
        await r.close()
        assert nc.callback is None

    asyncio.run(run())
