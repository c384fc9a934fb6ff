"""Knowing the fleet: which identities publish, which went quiet, what is carried.

Pure bookkeeping over values and *generation sequence numbers*: the store
numbers its generations 0, 1, 2, ... in the order they are filled (the
protocol's ``generation_number`` is an epoch second, so it cannot count
missed generations). Nothing here reads a clock or touches SQLite; the store
calls these functions with the time and the sequence number it is at.

Rules (docs/fleet.md):

- An identity that published (anything, static included) in generation ``s``
  has ``last_seq = s``. In the snapshot of generation ``seq`` it has missed
  ``seq - last_seq`` whole generations and is stale when that is above 0.
- ``--keep-stale N``: a stale identity's last non-static tables are carried
  into the snapshots ``last_seq + 1 .. last_seq + N``, ``age_generations``
  being ``seq - last_seq``; after that they are dropped. 0 never carries.
- ``--persist-ttl N``: a persisted copy published in ``s`` is carried into
  generations ``s + 1 .. s + N`` and dropped after. 0 keeps it forever.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Optional

import orjson


@dataclass(frozen=True)
class IdentitySeen:
    """What the server remembers of one identity since it started."""

    identity: str
    first_seen_epoch: float
    last_seen_epoch: float
    last_seq: int
    last_generation_number: int
    remote_addr: Optional[str] = None


@dataclass(frozen=True)
class Contribution:
    """Rows one identity put into one table of a snapshot."""

    tablename: str
    identity: str
    nr_rows: int
    age_generations: int  # 0: published in this generation; >0: a carried copy


def seen(
    previous: Optional[IdentitySeen],
    identity: str,
    now: float,
    seq: int,
    generation_number: int,
    remote_addr: Optional[str] = None,
) -> IdentitySeen:
    """The record after ``identity`` published at ``now`` into generation ``seq``.

    A publish without a known address keeps the address seen before.
    """
    if previous is None:
        return IdentitySeen(identity, now, now, seq, generation_number, remote_addr)
    # The constructor, not dataclasses.replace: this runs once per publish,
    # and replace() took three times as long (2.1 µs).
    return IdentitySeen(
        previous.identity,
        previous.first_seen_epoch,
        max(previous.last_seen_epoch, now),
        max(previous.last_seq, seq),
        max(previous.last_generation_number, generation_number),
        remote_addr if remote_addr is not None else previous.remote_addr,
    )


def generations_missed(last_seq: int, seq: int) -> int:
    """Whole generations since the identity's last publish, as of snapshot ``seq``."""
    return max(0, seq - last_seq)


def is_stale(last_seq: int, seq: int) -> bool:
    """True when the identity did not publish in generation ``seq``."""
    return generations_missed(last_seq, seq) > 0


def keep_stale_age(last_seq: int, seq: int, keep_stale: int) -> Optional[int]:
    """``age_generations`` of the identity's carried tables in snapshot
    ``seq``, or None when they are not carried (fresh, off, or too old)."""
    age = generations_missed(last_seq, seq)
    if age < 1 or age > keep_stale:
        return None
    return age


def keep_stale_expired(last_seq: int, seq: int, keep_stale: int) -> bool:
    """True once the identity's last tables will never be carried again."""
    return generations_missed(last_seq, seq) > keep_stale


def persist_expired(published_seq: int, seq: int, persist_ttl: int) -> bool:
    """True when a persisted copy published in ``published_seq`` must not be
    carried into generation ``seq`` (``persist_ttl`` 0: never expires)."""
    return persist_ttl > 0 and seq - published_seq > persist_ttl


IdentityRow = tuple[str, float, float, int, int, int, int, Optional[str], int]
TableIdentityRow = tuple[str, str, int, int]


def identity_rows(
    identities: Mapping[str, IdentitySeen], contributions: Iterable[Contribution], seq: int
) -> list[IdentityRow]:
    """Rows of ``qasino_server_identities`` for the snapshot of generation ``seq``:
    (identity, first_seen_epoch, last_seen_epoch, last_generation_number,
    generations_missed, nr_tables, nr_rows, remote_addr, stale), by identity.
    ``nr_tables``/``nr_rows`` are what it has in this snapshot, carried
    copies included."""
    tables: dict[str, set[str]] = {}
    nr_rows: dict[str, int] = {}
    for c in contributions:
        tables.setdefault(c.identity, set()).add(c.tablename.lower())
        nr_rows[c.identity] = nr_rows.get(c.identity, 0) + c.nr_rows
    out: list[IdentityRow] = []
    for name in sorted(identities):
        rec = identities[name]
        missed = generations_missed(rec.last_seq, seq)
        out.append(
            (
                name,
                rec.first_seen_epoch,
                rec.last_seen_epoch,
                rec.last_generation_number,
                missed,
                len(tables.get(name, ())),
                nr_rows.get(name, 0),
                rec.remote_addr,
                int(missed > 0),
            )
        )
    return out


def _fragment(rec: IdentitySeen, nr_tables: int, nr_rows: int) -> Optional[bytes]:
    """One identity's JSON array for :class:`IdentityFragments` (None if
    orjson cannot encode it: a lone surrogate, ...)."""
    try:
        encoded = orjson.dumps(
            [
                rec.identity,
                rec.first_seen_epoch,
                rec.last_seen_epoch,
                rec.last_generation_number,
                rec.last_seq,
                rec.remote_addr,
                nr_tables,
                nr_rows,
            ]
        )
    except TypeError:
        return None
    # A copy of its own size: orjson's result keeps its ~4 KiB output
    # buffer, and these are kept, one per identity, for the server's life.
    return memoryview(encoded).tobytes()


class IdentityFragments:
    """``qasino_server_identities`` kept as one JSON array per identity,
    ``[identity, first_seen_epoch, last_seen_epoch, last_generation_number,
    last_seq, remote_addr, nr_tables, nr_rows]``, for
    :data:`IDENTITIES_FROM_JSON` to turn into the table's rows inside SQLite.

    Only the identities that published since the last rotation or that
    have (or had, last time) tables in the snapshot are encoded again; for
    every other one nothing changed but ``generations_missed``, which
    SQLite computes from ``last_seq``."""

    def __init__(self) -> None:
        self._fragments: dict[str, bytes] = {}
        self._counted: set[str] = set()  # identities with nr_tables > 0 last time

    def update(
        self,
        identities: Mapping[str, IdentitySeen],
        seen_now: Iterable[str],
        contributions: Iterable[Contribution],
    ) -> Optional[bytes]:
        """The whole table as one JSON text, given the identities that
        published since the last call and the snapshot's contributions, or
        None if an identity cannot be encoded (then the cache starts over).
        Every identity in ``identities`` came in through ``seen_now`` once."""
        tables: dict[str, set[str]] = {}
        nr_rows: dict[str, int] = {}
        for c in contributions:
            tables.setdefault(c.identity, set()).add(c.tablename.lower())
            nr_rows[c.identity] = nr_rows.get(c.identity, 0) + c.nr_rows
        changed = set(identities) if not self._fragments else set(seen_now)
        changed |= self._counted | tables.keys()
        fresh: dict[str, bytes] = {}
        for name in changed:
            rec = identities.get(name)
            if rec is None:
                continue
            fragment = _fragment(rec, len(tables.get(name, ())), nr_rows.get(name, 0))
            if fragment is None:
                self._fragments.clear()
                self._counted = set()
                return None
            fresh[name] = fragment
        self._fragments.update(fresh)
        self._counted = set(tables)
        return b"[" + b",".join(self._fragments.values()) + b"]"


# Rows of qasino_server_identities from IdentityFragments' JSON (?1: the
# snapshot's seq, ?2: the JSON), in identity order as identity_rows gives them.
IDENTITIES_FROM_JSON = """
INSERT INTO "qasino_server_identities"
SELECT value->>0, value->>1, value->>2, value->>3, max(0, ?1 - (value->>4)),
       value->>6, value->>7, value->>5, ?1 - (value->>4) > 0
FROM json_each(?2) ORDER BY 1
"""


def table_identity_rows(contributions: Iterable[Contribution]) -> list[TableIdentityRow]:
    """Rows of ``qasino_server_table_identities``, by table then identity;
    several contributions of one identity to one table are summed (youngest age)."""
    merged: dict[tuple[str, str], TableIdentityRow] = {}
    for c in contributions:
        key = (c.tablename.lower(), c.identity)
        have = merged.get(key)
        if have is None:
            merged[key] = (c.tablename, c.identity, c.nr_rows, c.age_generations)
        else:
            merged[key] = (
                have[0],
                have[1],
                have[2] + c.nr_rows,
                min(have[3], c.age_generations),
            )
    return [row for _, row in sorted(merged.items())]


def identity_counts(identities: Mapping[str, IdentitySeen], seq: int) -> dict[str, int]:
    """``{"live": n, "stale": m}`` as of the snapshot of generation ``seq``
    (what ``/metrics`` exposes as ``qasino_identities{state}``)."""
    stale = sum(1 for rec in identities.values() if is_stale(rec.last_seq, seq))
    return {"live": len(identities) - stale, "stale": stale}
