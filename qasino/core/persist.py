"""Tables carried forward across generations (``persist``), kept in memory.

One entry per (tablename, identity), tablename compared case-insensitively.
A plain persisted publish replaces the entry; a persisted ``update`` publish
(and every name/value update) merges into it by its key columns, so the
entry always holds what the identity's table looks like after all its
upserts. The store re-applies every entry at the start of each generation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qasino.core.fleet import persist_expired
from qasino.core.model import Cell, Publish, PublishOptions, Table

Key = tuple[str, str]  # (lower tablename, identity)


@dataclass
class _Merged:
    """An update-style entry: union of columns and rows keyed by keycols."""

    tablename: str
    keycols: tuple[str, ...]
    columns: dict[str, tuple[str, str]] = field(default_factory=dict)  # lower -> (name, type)
    rows: dict[tuple[Cell, ...], dict[str, Cell]] = field(default_factory=dict)

    def merge(self, table: Table, merge_cells: bool) -> None:
        for name, type_ in zip(table.column_names, table.column_types):
            self.columns.setdefault(name.lower(), (name, type_))
        lowers = [c.lower() for c in table.column_names]
        key_idx = [lowers.index(k.lower()) for k in self.keycols]
        for row in table.rows:
            key = tuple(row[i] for i in key_idx)
            cells = dict(zip(lowers, row))
            if merge_cells and key in self.rows:
                self.rows[key].update(cells)
            else:
                self.rows[key] = cells

    def as_table(self) -> Table:
        lowers = list(self.columns)
        return Table(
            tablename=self.tablename,
            column_names=tuple(self.columns[c][0] for c in lowers),
            column_types=tuple(self.columns[c][1] for c in lowers),
            rows=[[cells.get(c) for c in lowers] for cells in self.rows.values()],
        )


@dataclass(frozen=True)
class CarriedTable:
    """What the store re-applies at the start of a generation."""

    publish: Publish
    merged: bool  # True: applied as an upsert; False: a plain copy (replaceable)
    published_at: float = 0.0  # when the identity last published it
    published_seq: int = 0  # the generation (sequence number) it was published in


class PersistRegistry:
    """In-memory registry of persisted tables; lost on restart by design."""

    def __init__(self) -> None:
        self._plain: dict[Key, Publish] = {}
        self._merged: dict[Key, _Merged] = {}
        self._times: dict[Key, float] = {}
        self._seqs: dict[Key, int] = {}

    def __len__(self) -> int:
        return len(self._plain) + len(self._merged)

    def __contains__(self, key: object) -> bool:
        """Whether (lower tablename, identity) has a persisted table."""
        return key in self._plain or key in self._merged

    def record(
        self, publish: Publish, merge_cells: bool = False, now: float = 0.0, seq: int = 0
    ) -> None:
        """Note an applied (non-static) publish: keep, merge or forget it."""
        opts = publish.options
        key = (publish.table.tablename.lower(), opts.identity)
        if not opts.persist:
            self.forget(key)
            return
        self._times[key] = now
        self._seqs[key] = seq
        if not opts.update:
            self._merged.pop(key, None)
            self._plain[key] = publish
            return
        self._plain.pop(key, None)
        keycols = opts.keycols or publish.table.column_names
        entry = self._merged.get(key)
        if entry is None or [k.lower() for k in entry.keycols] != [k.lower() for k in keycols]:
            entry = _Merged(publish.table.tablename, tuple(keycols))
            self._merged[key] = entry
        entry.merge(publish.table, merge_cells)

    def forget(self, key: Key) -> None:
        """Drop the entry of (lower tablename, identity), if any."""
        self._plain.pop(key, None)
        self._merged.pop(key, None)
        self._times.pop(key, None)
        self._seqs.pop(key, None)

    def expire(self, seq: int, ttl: int) -> list[Key]:
        """Forget the entries not re-published for more than ``ttl``
        generations as of generation ``seq`` (``--persist-ttl``); their keys."""
        if ttl <= 0:
            return []
        gone = [key for key, s in self._seqs.items() if persist_expired(s, seq, ttl)]
        for key in gone:
            self.forget(key)
        return gone

    def carried(self) -> list[CarriedTable]:
        """Every entry, as publishes ready to re-apply to a fresh generation."""
        out = [
            CarriedTable(
                p,
                merged=False,
                published_at=self._times.get(key, 0.0),
                published_seq=self._seqs.get(key, 0),
            )
            for key, p in self._plain.items()
        ]
        for key, entry in self._merged.items():
            opts = PublishOptions(identity=key[1], persist=True, update=True, keycols=entry.keycols)
            out.append(
                CarriedTable(
                    Publish(entry.as_table(), opts),
                    merged=True,
                    published_at=self._times.get(key, 0.0),
                    published_seq=self._seqs.get(key, 0),
                )
            )
        return out
