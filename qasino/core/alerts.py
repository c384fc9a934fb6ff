"""Alert rules (alerts.yaml) and their pending/firing/resolved life cycle.

Pure values and functions: parsing a rules file, and one evaluation step
from (previous state, rules, query outcomes, generation number, time) to
(next state, state changes). No reactor, no SQLite: the engine runs each
rule's SQL on a reader and hands the outcomes in.

A rules file is a YAML list of mappings::

    - alert: DiskAlmostFull
      sql: SELECT host, mount, pct FROM disks WHERE pct > 90
      for: 2
      key: [host, mount]
      labels: {severity: page}
      annotations: {summary: "{host}:{mount} is {pct}% full"}

A file that cannot be read, is not YAML or is not a list fails as a whole
(:class:`AlertsFileError`: the caller keeps its last good rules). A
malformed entry does not fail the file: it becomes an :class:`AlertRule`
with ``error`` set, listed as an ``error`` row and never evaluated.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Optional, Union

import yaml

from qasino.core.commands import parse_command
from qasino.core.errors import AlertsFileError, QueryError
from qasino.core.identifiers import is_identifier

PENDING = "pending"
FIRING = "firing"
RESOLVED = "resolved"
ERROR = "error"
STATES = (PENDING, FIRING, RESOLVED, ERROR)

# Rows of one rule beyond this many are not made instances (an error row
# says so): a rule that matches a whole table must not flood Alertmanager.
MAX_INSTANCES_PER_ALERT = 1000

# The alertname of the row that reports a rules file that could not be loaded.
FILE_ERROR_ALERTNAME = "alerts_file"

RULE_KEYS = frozenset({"alert", "sql", "for", "key", "labels", "annotations"})
# Labels a rule may not set: alertname is the rule's name.
RESERVED_LABELS = frozenset({"alertname"})

Labels = tuple[tuple[str, str], ...]

_SAFE_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class AlertRule:
    """One checked entry of the rules file."""

    alert: str
    sql: str
    for_generations: int = 1
    key: Optional[tuple[str, ...]] = None  # None: every column of the row
    labels: Labels = ()
    annotations: Labels = ()  # templates with {column} fields
    error: Optional[str] = None  # set when the entry itself is malformed


@dataclass(frozen=True)
class Outcome:
    """What running one rule's SQL gave: columns and rows, or an error."""

    column_names: tuple[str, ...] = ()
    rows: Sequence[Sequence[object]] = ()
    error: Optional[str] = None


@dataclass(frozen=True)
class Instance:
    """One row identity of one alert and where it is in its life cycle."""

    alertname: str
    labels: Labels  # key columns plus the static labels, sorted by name
    annotations: Labels
    state: str
    matched: int  # consecutive generations it has matched
    active_since_epoch: float  # when it started matching
    last_eval_epoch: float
    generation_number: int
    fired_epoch: Optional[float] = None
    resolved_epoch: Optional[float] = None

    @property
    def ident(self) -> tuple[str, Labels]:
        return (self.alertname, self.labels)


@dataclass(frozen=True)
class AlertState:
    """Every live instance and every rule that could not be evaluated."""

    instances: Mapping[tuple[str, Labels], Instance] = field(default_factory=dict)
    errors: Mapping[str, tuple[Labels, str]] = field(default_factory=dict)
    last_eval_epoch: float = 0.0
    generation_number: int = 0


# ---------------------------------------------------------------- parsing


def load_alerts_file(path: PathLike) -> list[AlertRule]:
    """Read and parse a rules file (UTF-8); raise AlertsFileError if that fails."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as err:
        raise AlertsFileError(f"cannot read alerts file {os.fspath(path)}: {err}") from err
    try:
        return parse_alerts_yaml(text)
    except AlertsFileError as err:
        raise AlertsFileError(f"{os.fspath(path)}: {err.message}") from err


def parse_alerts_yaml(text: str) -> list[AlertRule]:
    """Parse a rules file's text; one AlertRule per list entry, in order."""
    try:
        # libyaml's safe loader when PyYAML has it (10x faster: the file is
        # parsed on the event loop), else the pure-Python safe loader.
        document = yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = ", ".join(p for p in (err.context, err.problem) if p) or str(err)
        raise AlertsFileError(f"alerts file is not valid YAML{where}: {problem}") from err
    except (yaml.YAMLError, RecursionError) as err:
        raise AlertsFileError(f"alerts file is not valid YAML: {err}") from err
    if document is None:
        return []
    if not isinstance(document, list):
        raise AlertsFileError(
            "alerts file must be a YAML list of {alert: NAME, sql: 'SELECT ...', ...} "
            f"entries, not a {type(document).__name__}"
        )
    seen: set[str] = set()
    return [_parse_rule(entry, index, seen) for index, entry in enumerate(document, start=1)]


def _parse_rule(entry: object, index: int, seen: set[str]) -> AlertRule:
    if not isinstance(entry, dict):
        return AlertRule(f"rule{index}", "", error=f"entry {index} is not a mapping")
    raw_name = entry.get("alert")
    # The row of a rule with a bad name is named after its place in the file.
    name = raw_name if isinstance(raw_name, str) and is_identifier(raw_name) else f"rule{index}"
    raw_sql = entry.get("sql")
    sql = raw_sql.strip() if isinstance(raw_sql, str) and _utf8(raw_sql) else ""

    def broken(message: str) -> AlertRule:
        return AlertRule(name, sql, error=message)

    if raw_name is None:
        return broken(f"entry {index} has no alert name (alert: NAME)")
    if not is_identifier(raw_name):
        return broken(f"invalid alert name {raw_name!r}: must match [A-Za-z][A-Za-z0-9_]*")
    if name.lower() in seen:
        return broken(f"duplicate alert name {name!r}")
    seen.add(name.lower())
    unknown = sorted(str(k) for k in entry if k not in RULE_KEYS)
    if unknown:
        return broken(
            f"unknown key(s) {', '.join(unknown)}; an alert has: {', '.join(sorted(RULE_KEYS))}"
        )
    if not sql:
        return broken("sql must be a SELECT statement (text)")
    if not _utf8(entry):
        return broken("the entry holds text that is not valid Unicode (a lone surrogate escape?)")
    try:
        command = parse_command(sql)
    except QueryError as err:
        return broken(err.message)
    if command.kind != "select":
        return broken("sql must be a SELECT statement (SHOW/DESC are not allowed in alerts)")
    for_value = entry.get("for", 1)
    if isinstance(for_value, bool) or not isinstance(for_value, int) or for_value < 1:
        return broken(f"for must be a whole number of generations >= 1, not {for_value!r}")
    key: Optional[tuple[str, ...]] = None
    if "key" in entry:
        raw_key = entry["key"]
        items = [raw_key] if isinstance(raw_key, str) else raw_key
        if not isinstance(items, list) or not items or not all(is_identifier(k) for k in items):
            return broken("key must be a column name or a non-empty list of column names")
        key = tuple(items)
    labels, problem = _string_map(entry.get("labels"), "labels")
    if problem:
        return broken(problem)
    reserved = [k for k, _ in labels if k in RESERVED_LABELS]
    if reserved:
        return broken(f"label {reserved[0]!r} is reserved")
    annotations, problem = _string_map(entry.get("annotations"), "annotations")
    if problem:
        return broken(problem)
    for aname, template in annotations:
        try:
            template_fields(template)
        except ValueError as err:
            return broken(f"annotation {aname!r}: {err}")
    return AlertRule(name, sql, for_value, key, labels, annotations)


def _utf8(value: object) -> bool:
    """Every string in ``value`` (nested lists and mappings) encodes as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_utf8(k) and _utf8(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_utf8(v) for v in value)
    return True


def _string_map(value: object, what: str) -> tuple[Labels, Optional[str]]:
    """A mapping of identifier -> scalar, as sorted (name, text) pairs."""
    if value is None:
        return (), None
    if not isinstance(value, dict):
        return (), f"{what} must be a mapping of name: text"
    out: list[tuple[str, str]] = []
    for name, text in value.items():
        if not is_identifier(name):
            return (), f"invalid {what} name {name!r}: must match [A-Za-z][A-Za-z0-9_]*"
        if isinstance(text, (dict, list)) or text is None:
            return (), f"{what} {name!r} must be text"
        out.append((name, text if isinstance(text, str) else str(text)))
    return tuple(sorted(out)), None


# Format specs an annotation may use: fill/align, sign, width and precision
# of at most three and two digits, a type. No nested {fields}.
_FORMAT_SPEC_RE = re.compile(
    r"(?:.?[<>^=])?[+\- ]?#?0?\d{0,3}[,_]?(?:\.\d{1,2})?[bcdeEfFgGnosxX%]?\Z"
)


def template_fields(template: str) -> list[str]:
    """The ``{column}`` names of an annotation template; ValueError if it is
    malformed or uses anything but plain column names (no attributes or
    indexes, no conversions)."""
    names = []
    for _, field_name, spec, conversion in string.Formatter().parse(template):
        if field_name is None:
            continue
        if spec and not _FORMAT_SPEC_RE.match(spec):
            raise ValueError(
                f"{{{field_name}:{spec}}}: use a simple format such as {{{field_name}:.1f}}"
            )
        if not is_identifier(field_name):
            raise ValueError(
                f"{{{field_name}}} is not a column name: use {{column}} or {{column:format}}"
            )
        if conversion is not None:
            raise ValueError(f"{{{field_name}!{conversion}}}: conversions are not supported")
        names.append(field_name)
    return names


# ---------------------------------------------------------------- evaluation


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


_LABEL_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _check_columns(rule: AlertRule, columns: Sequence[str]) -> Optional[str]:
    """The key and the annotations' {column}s must be columns the query
    returns, and key columns must make valid label names."""
    lower = {c.lower() for c in columns}
    shown = ", ".join(columns) or "none"
    for name in rule.key or ():
        if name.lower() not in lower:
            return f"key column {name!r} is not a column the query returns ({shown})"
    if rule.key is None:
        for name in columns:
            if not _LABEL_NAME_RE.match(name):
                return (
                    f"column {name!r} cannot be a label name: give it a name "
                    "(... AS name) or list the key columns (key: [...])"
                )
            if name in RESERVED_LABELS:
                return f"column {name!r} cannot be a label name (reserved); rename it or set key"
    elif any(name in RESERVED_LABELS for name in rule.key):
        return "key column 'alertname' is reserved; rename it (AS another_name)"
    for aname, template in rule.annotations:
        for name in template_fields(template):
            if name.lower() not in lower:
                return (
                    f"annotation {aname!r} uses {{{name}}}, not a column the query "
                    f"returns ({shown})"
                )
    return None


def _instances_of(rule: AlertRule, outcome: Outcome) -> tuple[dict[Labels, Labels], Optional[str]]:
    """labels -> annotations for each row (the first row of a key wins)."""
    columns = list(outcome.column_names)
    problem = _check_columns(rule, columns)
    if problem:
        return {}, problem
    index = {c.lower(): i for i, c in reversed(list(enumerate(columns)))}
    key_cols = [columns[index[k.lower()]] for k in rule.key] if rule.key else columns
    out: dict[Labels, Labels] = {}
    for row in outcome.rows:
        values = {c.lower(): row[i] for c, i in index.items()}
        labels = dict(rule.labels)
        for col in key_cols:
            labels[col] = _text(values[col.lower()])
        label_pairs = tuple(sorted(labels.items()))
        if label_pairs in out:
            continue
        try:
            annotations = tuple(
                (name, _render(template, values)) for name, template in rule.annotations
            )
        except (ValueError, TypeError) as err:
            return {}, f"annotation could not be rendered: {err}"
        out[label_pairs] = annotations
    return out, None


class _Row(dict[str, object]):
    """Column values by case-insensitive name, for str.format_map."""

    def __missing__(self, name: str) -> object:
        return self[name.lower()] if name.lower() in self else ""


def _render(template: str, values: Mapping[str, object]) -> str:
    row = _Row({k: ("" if v is None else v) for k, v in values.items()})
    return template.format_map(row)


def evaluate(
    state: AlertState,
    rules: Sequence[AlertRule],
    outcomes: Mapping[str, Outcome],
    generation_number: int,
    now: float,
) -> tuple[AlertState, list[Instance]]:
    """One evaluation after a snapshot: the next state and every instance
    whose state changed (in rule order).

    ``outcomes`` maps each evaluated rule's name to what its SQL gave. A
    rule with an error (malformed, SQL failure, bad key) has an error row;
    its instances are left as they were. Instances of rules that are gone
    resolve like ones that stopped matching.
    """
    old = state.instances
    new: dict[tuple[str, Labels], Instance] = {}
    errors: dict[str, tuple[Labels, str]] = {}
    changes: list[Instance] = []
    frozen_names: set[str] = set()
    for rule in rules:
        outcome = outcomes.get(rule.alert)
        if rule.error is not None:
            problem: Optional[str] = rule.error
        elif outcome is None:
            problem = "not evaluated"
        elif outcome.error is not None:
            problem = outcome.error
        else:
            problem = None
        matches: dict[Labels, Labels] = {}
        if problem is None and outcome is not None:
            matches, problem = _instances_of(rule, outcome)
        if problem is None and len(matches) > MAX_INSTANCES_PER_ALERT:
            errors[rule.alert] = (
                rule.labels,
                f"{len(matches)} instances; only the first {MAX_INSTANCES_PER_ALERT} are kept",
            )
            matches = dict(list(matches.items())[:MAX_INSTANCES_PER_ALERT])
        if problem is not None:
            errors[rule.alert] = (rule.labels, problem)
            frozen_names.add(rule.alert)
            continue
        for labels, notes in matches.items():
            ident = (rule.alert, labels)
            prev = old.get(ident)
            if prev is None or prev.state == RESOLVED:
                matched = 1
                since = now
                fired: Optional[float] = None
            else:
                matched = prev.matched + 1
                since = prev.active_since_epoch
                fired = prev.fired_epoch
            target = FIRING if matched >= rule.for_generations else PENDING
            if target == FIRING and fired is None:
                fired = now
            inst = Instance(
                rule.alert,
                labels,
                notes,
                target,
                matched,
                since,
                now,
                generation_number,
                fired_epoch=fired,
            )
            new[ident] = inst
            if prev is None or prev.state != target:
                changes.append(inst)
    for ident, prev in old.items():
        if ident in new:
            continue
        if prev.alertname in frozen_names:
            if prev.state != RESOLVED:
                new[ident] = prev
            continue
        if prev.state == RESOLVED:
            continue  # kept for one generation: now gone
        inst = replace(
            prev,
            state=RESOLVED,
            matched=0,
            last_eval_epoch=now,
            generation_number=generation_number,
            resolved_epoch=now,
        )
        new[ident] = inst
        changes.append(inst)
    return AlertState(new, errors, now, generation_number), changes


# ---------------------------------------------------------------- outputs

TABLE_COLUMNS = (
    "alertname",
    "labels",
    "state",
    "active_since_epoch",
    "last_eval_epoch",
    "annotations",
    "error",
)


def _json_map(pairs: Iterable[tuple[str, str]]) -> str:
    return json.dumps(dict(pairs), sort_keys=True, ensure_ascii=False)


def table_rows(state: AlertState, file_error: Optional[str] = None) -> list[tuple[object, ...]]:
    """The rows of qasino_server_alerts (TABLE_COLUMNS), ordered."""
    rows: list[tuple[object, ...]] = []
    now = state.last_eval_epoch
    if file_error:
        rows.append((FILE_ERROR_ALERTNAME, "{}", ERROR, None, now, "{}", file_error))
    for name, (labels, message) in sorted(state.errors.items()):
        rows.append((name, _json_map(labels), ERROR, None, now, "{}", message))
    for inst in sorted(state.instances.values(), key=lambda i: (i.alertname, i.labels)):
        rows.append(
            (
                inst.alertname,
                _json_map(inst.labels),
                inst.state,
                inst.active_since_epoch,
                inst.last_eval_epoch,
                _json_map(inst.annotations),
                "",
            )
        )
    return rows


def counts_by_state(
    state: AlertState, file_error: Optional[str] = None
) -> dict[tuple[str, str], int]:
    """How many instances per (alertname, state), errors included (for
    the ``qasino_alerts{alertname,state}`` metric)."""
    counts: dict[tuple[str, str], int] = {}
    if file_error:
        counts[(FILE_ERROR_ALERTNAME, ERROR)] = 1
    for name in state.errors:
        counts[(name, ERROR)] = counts.get((name, ERROR), 0) + 1
    for inst in state.instances.values():
        k = (inst.alertname, inst.state)
        counts[k] = counts.get(k, 0) + 1
    return counts


def change_message(inst: Instance, identity: str) -> dict[str, object]:
    """The JSON of a ZeroMQ ALERT frame for one state change."""
    return {
        "op": "alert",
        "identity": identity,
        "alertname": inst.alertname,
        "labels": dict(inst.labels),
        "annotations": dict(inst.annotations),
        "state": inst.state,
        "generation_number": inst.generation_number,
        "active_since_epoch": inst.active_since_epoch,
    }


def rfc3339(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def alertmanager_alert(
    inst: Instance, generator_url: str, now: float, hold_s: float
) -> dict[str, object]:
    """One entry of Alertmanager's ``POST /api/v2/alerts`` body.

    A firing instance says it ends ``hold_s`` from now (re-sent every
    generation, so it ends on its own only if Qasino stops sending); a
    resolved one ends when it resolved.
    """
    labels = dict(inst.labels)
    labels["alertname"] = inst.alertname
    if inst.state == RESOLVED:
        ends = inst.resolved_epoch if inst.resolved_epoch is not None else now
    else:
        ends = now + hold_s
    starts = inst.fired_epoch if inst.fired_epoch is not None else inst.active_since_epoch
    return {
        "labels": labels,
        "annotations": dict(inst.annotations),
        "startsAt": rfc3339(starts),
        "endsAt": rfc3339(ends),
        "generatorURL": generator_url,
    }
