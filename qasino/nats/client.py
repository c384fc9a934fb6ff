"""Blocking NATS side of the clients (``qasino_publish --nats``,
``qasino_csvpublisher --nats``).

:class:`NatsPublisher` looks like the other client transports (``request``
and ``close``): a publish goes to ``qasino.publish.IDENTITY`` in the
JetStream stream and counts as sent once JetStream acknowledged it. The
asyncio client runs on a private daemon thread; every call waits at most
its timeout.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from typing import Any, Optional

import nats

from qasino.clients.transport import ServerError, TransportError
from qasino.nats.messages import GENSIG_SUBJECT, subject_for
from qasino.nats.publishing import publish_acked

CONNECT_TIMEOUT_S = 2.0


class NatsPublisher:
    def __init__(self, servers: str, timeout_s: float = 10.0, name: str = "qasino-client") -> None:
        self.servers = [s.strip() for s in servers.split(",") if s.strip()]
        self.url = ",".join(self.servers)
        self.endpoint = "NATS " + self.url
        self.timeout_s = timeout_s
        self.name = name
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="qasino-nats-client", daemon=True)
        self.thread.start()
        self.nc: Any = None
        self.js: Any = None
        self.signals: queue.Queue[dict[str, Any]] = queue.Queue()
        self._sub: Any = None
        self.last_error = ""

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def _call(self, coro: Any, timeout: float) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            why = f" ({self.last_error})" if self.last_error else ""
            raise TransportError(
                f"no answer from NATS at {self.url} within {timeout:g}s{why}"
            ) from None

    async def _connect(self) -> None:
        if self.nc is not None:
            return

        async def error(e: Exception) -> None:
            self.last_error = str(e) or type(e).__name__

        try:
            # Retries until connected; the caller's timeout bounds the wait.
            self.nc = await nats.connect(
                servers=self.servers,
                name=self.name,
                connect_timeout=CONNECT_TIMEOUT_S,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                allow_reconnect=True,
                error_cb=error,
            )
        except Exception as e:  # noqa: BLE001 - one clear error for every cause
            raise TransportError(
                f"cannot reach NATS at {self.url}: {e or type(e).__name__}"
            ) from None
        self.js = self.nc.jetstream()

    def connect(self) -> None:
        self._call(self._connect(), max(self.timeout_s, CONNECT_TIMEOUT_S * len(self.servers) + 1))

    async def _publish(self, subject: str, body: bytes, headers: Optional[dict[str, str]]) -> Any:
        await self._connect()
        try:
            return await publish_acked(self.js, subject, body, headers, self.timeout_s)
        except Exception as e:  # noqa: BLE001 - no ack: not published
            raise TransportError(
                f"NATS JetStream did not acknowledge the publish: {e or type(e).__name__}"
            ) from None

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Publish one ``add_table_data`` message; the ack as an ok reply."""
        if message.get("op", "add_table_data") != "add_table_data":
            raise ServerError(f"op {message.get('op')!r} cannot be sent through NATS")
        identity = str(message.get("identity") or "")
        body = json.dumps(message).encode("utf-8")
        ack = self._call(self._publish(subject_for(identity), body, None), self.timeout_s + 5)
        return {"response_op": "ok", "stream": ack.stream, "seq": ack.seq}

    async def _subscribe(self) -> None:
        await self._connect()

        async def got(msg: Any) -> None:
            try:
                info = json.loads(msg.data)
            except ValueError:
                return
            if isinstance(info, dict):
                self.signals.put(info)

        self._sub = await self.nc.subscribe(GENSIG_SUBJECT, cb=got)

    def subscribe_signals(self) -> None:
        """Generation signals from ``qasino.gensig`` into ``self.signals``."""
        self._call(self._subscribe(), self.timeout_s)

    async def _close(self) -> None:
        if self.nc is not None:
            try:
                await self.nc.close()
            except Exception:  # noqa: BLE001 - closing anyway
                pass

    def close(self) -> None:
        if self.thread.is_alive():
            try:
                self._call(self._close(), 5)
            except TransportError:
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


def run_on_nats_signals(
    settings: Any,
    sender: Any,
    stopper: Any,
    client: NatsPublisher,
    send_delay_max: float,
    gen_signal_timeout: float,
    poll_s: float = 0.2,
) -> None:
    """``qasino_csvpublisher --nats``: a round after each signal on
    ``qasino.gensig`` (several servers on one stream all send one per
    generation: one round per generation number)."""
    import logging
    import random
    import time

    from qasino.clients.csvpublisher import run_round

    log = logging.getLogger("qasino.csvpublisher")
    while not stopper.event.is_set():
        try:
            client.subscribe_signals()
            break
        except TransportError as e:
            log.error("%s; retrying", e)
            if stopper.wait(1.0):
                return
    log.info("waiting for generation signals on NATS subject %s", GENSIG_SUBJECT)
    last_number: Optional[int] = None
    last_signal = time.monotonic()
    while not stopper.event.is_set():
        try:
            info = client.signals.get(timeout=poll_s)
        except queue.Empty:
            if time.monotonic() - last_signal > gen_signal_timeout:
                log.warning("no generation signal on NATS for %gs", gen_signal_timeout)
                last_signal = time.monotonic()
            continue
        while True:  # several queued signals make one round
            try:
                info = client.signals.get_nowait()
            except queue.Empty:
                break
        last_signal = time.monotonic()
        number = info.get("generation_number")
        if number == last_number:
            continue
        last_number = number if isinstance(number, int) else None
        delay = random.uniform(0.0, send_delay_max) if send_delay_max > 0 else 0.0
        log.info("generation %s from %s: sending in %.1fs", number, info.get("identity"), delay)
        if stopper.wait(delay):
            break
        run_round(sender, settings, stop=stopper.event)
