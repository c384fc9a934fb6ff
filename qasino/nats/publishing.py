"""Publishing into JetStream until it acknowledges, or a deadline passes.

While a stream elects a new leader (a node died) JetStream answers "no
responders" or nothing for a few seconds. A publish is retried until its
deadline with the same ``Nats-Msg-Id``, so that JetStream stores it once
even when an earlier try was stored but its ack was lost.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Optional

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

RETRY_WAIT_S = 0.25
TRY_TIMEOUT_S = 2.0


async def publish_acked(
    js: Any,
    subject: str,
    data: bytes,
    headers: Optional[dict[str, str]],
    timeout_s: float,
) -> Any:
    """JetStream's PubAck; raises the last error once ``timeout_s`` is spent."""
    headers = dict(headers or {})
    headers.setdefault("Nats-Msg-Id", uuid.uuid4().hex)
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        try:
            return await js.publish(
                subject, data, headers=headers, timeout=max(0.1, min(TRY_TIMEOUT_S, remaining))
            )
        except (
            NoRespondersError,
            NoStreamResponseError,
            ServiceUnavailableError,
            NatsTimeoutError,
            asyncio.TimeoutError,
        ):
            if time.monotonic() + RETRY_WAIT_S >= deadline:
                raise
            await asyncio.sleep(RETRY_WAIT_S)
