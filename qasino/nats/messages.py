"""What the QASINO stream holds, and how a message becomes a store call.

Subjects:

- ``qasino.publish.IDENTITY``: one publish: the ``add_table_data`` JSON
  (or a ``name_value_update`` JSON), or the CSV publish format when the
  message has the header ``Content-Type: text/csv``.
- ``qasino.tick``: empty messages the servers publish about once a second
  (de-duplicated by ``Nats-Msg-Id``), so that stream time moves on and
  generations are cut while nobody publishes.
- ``qasino.gensig``: the generation signal (plain NATS, not in the stream).

No NATS library is imported here: these are pure functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional, Union

from qasino.core.errors import InvalidInput
from qasino.core.model import Publish
from qasino.core.tables import parse_csv_publish, parse_json_publish

STREAM = "QASINO"
KEEP_STREAM = "QASINO_KEEP"
KEEP_PREFIX = "qasino.keep."
KEEP_SUBJECTS = KEEP_PREFIX + ">"
# Headers of a kept copy: where and when the original was in stream QASINO.
ORIGIN_SEQ = "Qasino-Seq"
ORIGIN_TIME = "Qasino-Time"
ORIGIN_SUBJECT = "Qasino-Subject"
PUBLISH_PREFIX = "qasino.publish."
PUBLISH_SUBJECTS = PUBLISH_PREFIX + ">"
TICK_SUBJECT = "qasino.tick"
GENSIG_SUBJECT = "qasino.gensig"
CSV_TYPE = "text/csv"
IDENTITY_HEADER = "Qasino-Identity"

_SUBJECT_BAD = re.compile(r"[^A-Za-z0-9_\-.]")


def subject_for(identity: str) -> str:
    """``qasino.publish.IDENTITY`` with characters NATS subjects cannot hold
    (space, ``*``, ``>``, control characters) as ``_`` and no empty token."""
    tokens = [t for t in _SUBJECT_BAD.sub("_", identity).split(".") if t]
    return PUBLISH_PREFIX + (".".join(tokens) or "_")


def identity_from_subject(subject: str) -> Optional[str]:
    if subject.startswith(PUBLISH_PREFIX):
        return subject[len(PUBLISH_PREFIX) :] or None
    return None


def keep_subject(kind: str, identity: str, tablename: str, column: str = "") -> str:
    """Where the last static (``s``), persist (``p``) or name/value (``n``)
    publish of one identity and table is kept (one message per subject).
    The identity is hex-encoded: any identity, one token, no collisions."""
    subject = f"{KEEP_PREFIX}{kind}.{identity.encode('utf-8').hex() or '_'}.{tablename.lower()}"
    return subject + (f".{column.lower()}" if column else "")


def kept_copy_headers(msg: StreamMessage) -> dict[str, str]:
    headers = dict(msg.headers or {})
    headers.pop("Nats-Msg-Id", None)
    headers[ORIGIN_SEQ] = str(msg.seq)
    headers[ORIGIN_TIME] = str(msg.ts_ns)
    headers[ORIGIN_SUBJECT] = msg.subject
    headers["Nats-Msg-Id"] = f"keep-{msg.seq}"
    return headers


def original_of(kept: StreamMessage) -> Optional[StreamMessage]:
    """The original message a kept copy stands for (None: a tombstone)."""
    headers = kept.headers or {}
    if not kept.data or ORIGIN_SEQ not in headers:
        return None
    try:
        seq, ts_ns = int(headers[ORIGIN_SEQ]), int(headers[ORIGIN_TIME])
    except (KeyError, ValueError):
        return None
    subject = headers.get(ORIGIN_SUBJECT, PUBLISH_PREFIX + "_")
    rest = {
        k: v
        for k, v in headers.items()
        if not k.startswith(("Qasino-Seq", "Qasino-Time", "Qasino-Subject", "Nats-"))
    }
    return StreamMessage(subject, kept.data, rest or None, seq, ts_ns)


@dataclass(slots=True)
class StreamMessage:
    """One message as the consumer got it (plain values, any thread; not
    changed once made). Not frozen: a frozen dataclass took 1.1 µs to make,
    this 0.2, once per message on both sides of the reader's pipe."""

    subject: str
    data: bytes
    headers: Optional[dict[str, str]]
    seq: int  # stream sequence
    ts_ns: int  # stream timestamp, nanoseconds since the epoch
    pending: int = 0  # messages after this one the consumer has not delivered

    @property
    def ts(self) -> float:
        return self.ts_ns / 1e9


@dataclass(frozen=True)
class NameValue:
    tablename: str
    column: str
    value: str
    identity: str


Decoded = Union[Publish, NameValue, None]  # None: a tick


def decode(msg: StreamMessage, limits: dict[str, int]) -> Decoded:
    """The store call a message stands for; raises InvalidInput for bad input."""
    if msg.subject == TICK_SUBJECT:
        return None
    default_identity = identity_from_subject(msg.subject)
    headers = msg.headers or {}
    content_type = headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type == CSV_TYPE:
        identity = headers.get(IDENTITY_HEADER) or default_identity
        return parse_csv_publish(
            msg.data,
            identity,
            max_rows=limits["max_rows"],
            max_columns=limits["max_columns"],
            max_cell_bytes=limits["max_cell_bytes"],
        )
    from qasino.ops import decode_body

    try:
        request, nbytes = decode_body(msg.data)
    except (ValueError, UnicodeError) as e:
        raise InvalidInput(f"could not parse the message as JSON: {e}") from None
    if not isinstance(request, dict):
        raise InvalidInput("a publish must be a JSON object")
    op = request.get("op", "add_table_data")
    if op == "name_value_update":
        return _name_value(request, default_identity)
    if op != "add_table_data":
        raise InvalidInput(f"unknown op {op!r} on {msg.subject}")
    if not request.get("identity") and default_identity:
        request["identity"] = default_identity
        nbytes = None
    return parse_json_publish(request, **limits, decoded_from_bytes=nbytes)


def _name_value(request: dict[str, Any], default_identity: Optional[str]) -> NameValue:
    name, value = request.get("name"), request.get("value")
    identity = request.get("identity") or default_identity
    if not isinstance(name, str) or name.count(".") != 1:
        raise InvalidInput("'name' must be TABLE.COLUMN")
    if value is None or not isinstance(value, (str, int, float)):
        raise InvalidInput("'value' is required")
    if not isinstance(identity, str) or not identity:
        raise InvalidInput("'identity' is required")
    tablename, column = name.split(".")
    return NameValue(tablename, column, str(value), identity)


def parse_ack_reply(reply: str) -> Optional[tuple[int, int, int]]:
    """(stream sequence, timestamp ns, pending) from a JetStream ack subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>``
    or the newer form with ``<domain>.<account hash>`` after ``$JS.ACK``
    (and a random token at the end).
    """
    tokens = reply.split(".")
    if len(tokens) < 9 or tokens[0] != "$JS" or tokens[1] != "ACK":
        return None
    try:
        if len(tokens) == 9:
            return int(tokens[5]), int(tokens[7]), int(tokens[8])
        return int(tokens[7]), int(tokens[9]), int(tokens[10])
    except (ValueError, IndexError):
        return None
