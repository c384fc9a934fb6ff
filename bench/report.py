"""Figures, ceilings, ratios and targets: the table and the JSON line.

A figure is a list of per-round values under a JSON key (and, for the
ingest matrix and the two-scenario figures, a case such as ``"16x100"``).
Its median is the reported value, min-max its spread. A ratio divides a
median by the median of a ceiling measured in the same run.

A figure may be *extrapolated* (``Results.extrapolate``: e.g. quick mode's
fleet of 200 hosts scaled x50 to 10,000); the mark goes with it wherever it
is shown: its table row, its verdicts and the JSON. A figure may also be
*unverified* (``Results.unverified``: e.g. acknowledged publishes missing
from the snapshots); a target with ``all_verified`` then misses whatever
the value.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

Ref = tuple[str, Optional[str]]  # (JSON key, case)

UNITS = {
    "_per_s": "/s",
    "_ms": "ms",
    "_mb_per_million_rows": "MB/1M rows",
    "_mb_per_generation": "MB/gen",
    "_mb": "MB",
    "_s": "s",
}


def unit_of(key: str) -> str:
    for suffix, unit in UNITS.items():
        if key.endswith(suffix):
            return unit
    return ""


def label(ref: Ref) -> str:
    key, case = ref
    return f"{key}[{case}]" if case else key


@dataclass
class Figure:
    key: str
    case: Optional[str]
    values: list[float] = field(default_factory=list)
    extrapolated: list[str] = field(default_factory=list)  # how, once per kind
    unverified: list[str] = field(default_factory=list)  # what was not verified, per round

    @property
    def mark(self) -> str:
        """ "" or "extrapolated x50 from 200 hosts; ...": shown with the value."""
        return "extrapolated " + "; ".join(self.extrapolated) if self.extrapolated else ""

    @property
    def median(self) -> float:
        return float(statistics.median(self.values))

    @property
    def spread(self) -> tuple[float, float]:
        return min(self.values), max(self.values)


@dataclass(frozen=True)
class Target:
    name: str
    figure: Ref
    threshold: float
    text: str
    ceiling: Optional[Ref] = None  # compare figure/ceiling to the threshold
    at_most: bool = False  # the figure must stay under the threshold
    all_verified: bool = False  # and no round of the figure may be unverified


@dataclass
class Verdict:
    target: Target
    value: Optional[float]
    passed: Optional[bool]  # None: not measured in this run
    extrapolated: str = ""  # the figure's mark: the verdict is on an extrapolation
    unverified: tuple[str, ...] = ()  # why an all_verified target missed

    @property
    def word(self) -> str:
        word = {True: "pass", False: "MISS", None: "n/a"}[self.passed]
        why = []
        if self.unverified:
            why.append(f"not all verified: {len(self.unverified)} rounds")
        if self.extrapolated and self.passed is not None:
            why.append(self.extrapolated)
        return f"{word} ({'; '.join(why)})" if why else word


class Results:
    """Everything measured in one run."""

    def __init__(self) -> None:
        self.figures: dict[Ref, Figure] = {}
        self.details: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}  # top-level JSON keys that are not figures
        self.big_rotation_case = "1x1000000"  # smaller in --quick
        self.notes: list[str] = []

    def figure(self, ref: Ref) -> Figure:
        if ref not in self.figures:
            self.figures[ref] = Figure(*ref)
        return self.figures[ref]

    def add(self, key: str, value: float, case: Optional[str] = None) -> None:
        self.figure((key, case)).values.append(float(value))

    def extrapolate(self, ref: Ref, how: str) -> None:
        """Mark a figure as extrapolated (``how``: "x50 from 200 hosts")."""
        marks = self.figure(ref).extrapolated
        if how not in marks:
            marks.append(how)

    def unverify(self, ref: Ref, what: str) -> None:
        """Record that a round of a figure was not fully verified."""
        self.figure(ref).unverified.append(what)

    def median(self, ref: Ref) -> Optional[float]:
        figure = self.figures.get(ref)
        return figure.median if figure and figure.values else None

    def ratio(self, ref: Ref, ceiling: Ref) -> Optional[float]:
        value, top = self.median(ref), self.median(ceiling)
        if value is None or not top:
            return None
        return value / top

    def verdict(self, target: Target) -> Verdict:
        if target.ceiling is not None:
            value = self.ratio(target.figure, target.ceiling)
        else:
            value = self.median(target.figure)
        if value is None:
            return Verdict(target, None, None)
        figure = self.figures[target.figure]
        ok = value <= target.threshold if target.at_most else value >= target.threshold
        unverified = tuple(figure.unverified) if target.all_verified else ()
        return Verdict(target, value, ok and not unverified, figure.mark, unverified)


# ------------------------------------------------------------------ targets


def targets(big_rotation_case: str = "1x1000000") -> list[Target]:
    out = [
        Target(
            "http_16x100_vs_bare_http",
            ("http_ingest_tables_per_s", "16x100"),
            0.70,
            ">= 70% of bare_http_req_per_s",
            ceiling=("bare_http_req_per_s", None),
        )
    ]
    for transport in ("http", "zmq"):
        for publishers in (1, 16, 256):
            case = f"{publishers}x1000"
            out.append(
                Target(
                    f"{transport}_{case}_vs_raw",
                    (f"{transport}_ingest_rows_per_s", case),
                    0.50,
                    ">= 50% of raw_rows_per_s",
                    ceiling=("raw_rows_per_s", None),
                )
            )
    for transport in ("zmq", "http"):
        out.append(
            Target(
                f"fleet_{transport}_well_inside_30s",
                ("fleet_absorb_s", transport),
                24.0,
                "<= 24 s (80% of a 30 s generation), all verified",
                at_most=True,
                all_verified=True,
            )
        )
    out += [
        Target(
            "rotation_pause_at_1m_rows",
            ("rotation_query_pause_ms", big_rotation_case),
            20.0,
            "< 20 ms",
            at_most=True,
        ),
        Target(
            "history_pause_at_1m_rows",
            ("history_rotation_query_pause_ms", None),
            20.0,
            "< 20 ms (--history 10)",
            at_most=True,
        ),
        Target(
            "history_ingest_ratio",
            ("history_ingest_ratio", None),
            0.90,
            "> 0.9 of ingest without history",
        ),
        Target("query_p99_during_ingest", ("query_p99_ms", None), 50.0, "< 50 ms", at_most=True),
        Target(
            "alerts_query_p99_while_evaluating",
            ("alerts_query_p99_ms", None),
            50.0,
            "< 50 ms",
            at_most=True,
        ),
        Target(
            "alerts_rotation_pause_while_evaluating",
            ("alerts_rotation_query_pause_ms", None),
            20.0,
            "< 20 ms",
            at_most=True,
        ),
        Target(
            "query_json_rows_per_s",
            ("query_json_rows_per_s", None),
            600_000.0,
            ">= 600,000 rows/s",
        ),
        Target(
            "query_arrays_rows_per_s",
            ("query_arrays_rows_per_s", None),
            1_000_000.0,
            ">= 1,000,000 rows/s",
        ),
        Target(
            "query_arrays_vs_encode_ceiling",
            ("query_arrays_rows_per_s", None),
            0.70,
            ">= 70% of encode_ceiling_rows_per_s",
            ceiling=("encode_ceiling_rows_per_s", None),
        ),
        Target(
            "reactor_gap_while_encoding",
            ("reactor_busy_gap_ms", None),
            20.0,
            "<= 20 ms",
            at_most=True,
        ),
        Target(
            "peer_qasino_vs_pushgateway_no_check",
            ("peer_qasino_per_s", None),
            1.0,
            ">= 1.0x Pushgateway no-check, all verified",
            ceiling=("peer_pushgateway_no_check_per_s", None),
            all_verified=True,
        ),
    ]
    return out


def default_ceiling(ref: Ref) -> Optional[Ref]:
    """The ceiling a figure is shown against in the table (ratio column)."""
    key, case = ref
    if key.endswith("_ingest_rows_per_s"):
        return ("raw_rows_per_s", None)
    if key == "http_ingest_tables_per_s" and case and case.endswith("x100"):
        return ("bare_http_req_per_s", None)
    if key == "zmq_ingest_tables_per_s" and case and case.endswith("x100"):
        return ("bare_zmq_msg_per_s", None)
    if key in ("query_arrays_rows_per_s", "query_json_rows_per_s"):
        return ("encode_ceiling_rows_per_s", None)
    if key in ("peer_qasino_per_s", "peer_pushgateway_default_per_s"):
        return ("peer_pushgateway_no_check_per_s", None)
    return None


# ------------------------------------------------------------------ output


def fmt(value: Optional[float], unit: str = "") -> str:
    if value is None:
        return "-"
    if unit in ("ms", "s", "MB/1M rows", "MB/gen", "MB") or abs(value) < 100:
        return f"{value:,.1f}"
    return f"{value:,.0f}"


def table_rows(results: Results) -> list[list[str]]:
    by_figure: dict[Ref, list[Verdict]] = {}
    for target in targets(results.big_rotation_case):
        by_figure.setdefault(target.figure, []).append(results.verdict(target))
    rows = []
    for ref, figure in results.figures.items():
        unit = unit_of(ref[0])
        lo, hi = figure.spread
        verdicts = by_figure.get(ref, [])
        ceiling = next(
            (v.target.ceiling for v in verdicts if v.target.ceiling), default_ceiling(ref)
        )
        ratio = results.ratio(ref, ceiling) if ceiling else None
        median = f"{fmt(figure.median, unit)} {unit}".strip()
        rows.append(
            [
                label(ref),
                f"{median} ({figure.mark})" if figure.mark else median,
                f"{fmt(lo, unit)}-{fmt(hi, unit)} (n={len(figure.values)})",
                f"{label(ceiling)}={fmt(results.median(ceiling))}" if ceiling else "",
                f"{ratio:.2f}" if ratio is not None else "",
                "; ".join(v.target.text for v in verdicts),
                " ".join(v.word for v in verdicts),
            ]
        )
    return rows


def render_table(results: Results) -> str:
    header = ["figure", "median", "spread min-max", "ceiling", "ratio", "target", "verdict"]
    rows = [header, *table_rows(results)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def nest(results: Results, value_of: Callable[[Figure], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for (key, case), figure in results.figures.items():
        if case is None:
            out[key] = value_of(figure)
        else:
            out.setdefault(key, {})[case] = value_of(figure)
    return out


def summary_json(results: Results, config: dict[str, Any]) -> dict[str, Any]:
    """The last line: medians under their keys, then spread, ratios, targets."""
    out = nest(results, lambda f: round(f.median, 3))
    out.update(results.extra)
    out["spread"] = nest(results, lambda f: [round(v, 3) for v in f.spread])
    out["rounds"] = nest(results, lambda f: len(f.values))
    ratios = {}
    for ref in results.figures:
        ceiling = default_ceiling(ref)
        ratio = results.ratio(ref, ceiling) if ceiling else None
        if ratio is not None and ceiling is not None:
            ratios[f"{label(ref)}/{label(ceiling)}"] = round(ratio, 4)
    out["ratios"] = ratios
    out["targets"] = {
        v.target.name: {
            "figure": label(v.target.figure),
            "against": label(v.target.ceiling) if v.target.ceiling else None,
            "value": None if v.value is None else round(v.value, 4),
            "threshold": v.target.threshold,
            "rule": v.target.text,
            "pass": v.passed,
            "extrapolated": v.extrapolated or None,
            "unverified": list(v.unverified),
        }
        for v in (results.verdict(t) for t in targets(results.big_rotation_case))
    }
    out["extrapolated"] = {
        label(ref): figure.mark for ref, figure in results.figures.items() if figure.mark
    }
    out["details"] = results.details
    out["notes"] = results.notes
    out["config"] = config
    return out
