"""Alert rules and their life cycle: pure functions, no reactor."""

from __future__ import annotations

import json

import pytest

from qasino.core.alerts import (
    FIRING,
    PENDING,
    RESOLVED,
    AlertRule,
    AlertState,
    Outcome,
    alertmanager_alert,
    counts_by_state,
    evaluate,
    load_alerts_file,
    parse_alerts_yaml,
    rfc3339,
    table_rows,
)
from qasino.core.errors import AlertsFileError

DISK = """
- alert: DiskAlmostFull
  sql: SELECT host, mount, pct FROM disks WHERE pct > 90
  for: 2
  key: [host, mount]
  labels: {severity: page}
  annotations: {summary: "{host}:{mount} is {pct}% full"}
"""


def disk_rule() -> AlertRule:
    return parse_alerts_yaml(DISK)[0]


def rows(*rs: tuple[object, ...]) -> Outcome:
    return Outcome(("host", "mount", "pct"), list(rs))


def step(state, rule, outcome, gen, now=None):
    return evaluate(state, [rule], {rule.alert: outcome}, gen, float(now or gen))


def test_rule_file_example_parses_with_all_fields():
    rule = disk_rule()
    assert rule.error is None
    assert rule.alert == "DiskAlmostFull"
    assert rule.for_generations == 2
    assert rule.key == ("host", "mount")
    assert rule.labels == (("severity", "page"),)
    assert rule.annotations == (("summary", "{host}:{mount} is {pct}% full"),)


def test_defaults_for_key_labels_annotations():
    (rule,) = parse_alerts_yaml("- {alert: A, sql: SELECT 1 AS x}")
    assert (rule.for_generations, rule.key, rule.labels, rule.annotations) == (1, None, (), ())


@pytest.mark.parametrize(
    "entry, message",
    [
        ("{alert: 'bad name', sql: SELECT 1}", "invalid alert name"),
        ("{sql: SELECT 1}", "no alert name"),
        ("{alert: A, sql: DELETE FROM t}", "Only SELECT"),
        ("{alert: A, sql: SHOW tables}", "SHOW/DESC"),
        ("{alert: A}", "sql must be"),
        ("{alert: A, sql: SELECT 1, for: 0}", "for must be"),
        ("{alert: A, sql: SELECT 1, for: x}", "for must be"),
        ("{alert: A, sql: SELECT 1, key: ['a b']}", "key must be"),
        ("{alert: A, sql: SELECT 1, labels: {alertname: x}}", "reserved"),
        ("{alert: A, sql: SELECT 1, labels: {'a-b': x}}", "invalid labels name"),
        ("{alert: A, sql: SELECT 1, annotations: {s: '{x.__class__}'}}", "not a column name"),
        ("{alert: A, sql: SELECT 1, annotations: {s: '{x!r}'}}", "conversions"),
        ("{alert: A, sql: SELECT 1, annotations: {s: '{x:>999999999}'}}", "simple format"),
        ("{alert: A, sql: SELECT 1, annotations: {s: '{x:{y}}'}}", "simple format"),
        ("{alert: A, sql: SELECT 1, fro: 2}", "unknown key"),
        ("just text", "not a mapping"),
    ],
)
def test_malformed_rule_is_an_error_rule_not_a_failed_file(entry, message):
    rules = parse_alerts_yaml(f"- {entry}\n- {{alert: Good, sql: SELECT 1}}\n")
    assert message in (rules[0].error or "")
    assert rules[1].error is None


def test_duplicate_alert_name_is_an_error_rule():
    rules = parse_alerts_yaml("- {alert: A, sql: SELECT 1}\n- {alert: a, sql: SELECT 2}\n")
    assert rules[0].error is None and "duplicate" in (rules[1].error or "")


@pytest.mark.parametrize("text", ["- [unclosed", "alert: A", "{a: 1}", "- a: !!python/object x"])
def test_broken_file_raises_alerts_file_error(text):
    with pytest.raises(AlertsFileError):
        parse_alerts_yaml(text)


def test_unreadable_file_names_the_path(tmp_path):
    with pytest.raises(AlertsFileError, match="missing.yaml"):
        load_alerts_file(tmp_path / "missing.yaml")


def test_pending_then_firing_after_for_generations_then_resolved_then_gone():
    rule = disk_rule()
    s0 = AlertState()
    s1, ch1 = step(s0, rule, rows(("h1", "/", 95)), 1)
    assert [(i.state, dict(i.labels)) for i in ch1] == [
        (PENDING, {"host": "h1", "mount": "/", "severity": "page"})
    ]
    assert dict(ch1[0].annotations) == {"summary": "h1:/ is 95% full"}
    s2, ch2 = step(s1, rule, rows(("h1", "/", 97)), 2)
    assert [i.state for i in ch2] == [FIRING]
    assert ch2[0].active_since_epoch == 1.0 and ch2[0].fired_epoch == 2.0
    assert dict(ch2[0].annotations) == {"summary": "h1:/ is 97% full"}
    s3, ch3 = step(s2, rule, rows(("h1", "/", 98)), 3)
    assert ch3 == [] and next(iter(s3.instances.values())).state == FIRING
    s4, ch4 = step(s3, rule, rows(), 4)
    assert [(i.state, i.resolved_epoch) for i in ch4] == [(RESOLVED, 4.0)]
    s5, ch5 = step(s4, rule, rows(), 5)
    assert ch5 == [] and s5.instances == {}


def test_instance_that_stops_matching_before_firing_resolves_without_firing():
    rule = disk_rule()
    s1, _ = step(AlertState(), rule, rows(("h1", "/", 95)), 1)
    s2, ch = step(s1, rule, rows(), 2)
    assert [(i.state, i.fired_epoch) for i in ch] == [(RESOLVED, None)]


def test_a_resolved_instance_that_matches_again_starts_pending_again():
    rule = disk_rule()
    s = AlertState()
    for gen, out in enumerate([rows(("h", "/", 99))] * 2 + [rows()], start=1):
        s, _ = step(s, rule, out, gen)
    s, ch = step(s, rule, rows(("h", "/", 99)), 4)
    assert [(i.state, i.matched, i.active_since_epoch) for i in ch] == [(PENDING, 1, 4.0)]


def test_for_1_fires_at_once_and_key_defaults_to_all_columns():
    (rule,) = parse_alerts_yaml("- alert: A\n  sql: SELECT a, b FROM t\n")
    s, ch = step(AlertState(), rule, Outcome(("a", "b"), [(1, None), (1, None), (2, "x")]), 1)
    assert sorted((i.state, i.labels) for i in ch) == [
        (FIRING, (("a", "1"), ("b", ""))),
        (FIRING, (("a", "2"), ("b", "x"))),
    ]


def test_sql_error_is_an_error_row_and_keeps_the_instances():
    rule = disk_rule()
    s, _ = step(AlertState(), rule, rows(("h", "/", 99)), 1)
    s, _ = step(s, rule, rows(("h", "/", 99)), 2)
    s, ch = step(s, rule, Outcome(error="no such table: disks"), 3)
    assert ch == []
    assert [i.state for i in s.instances.values()] == [FIRING]
    table = table_rows(s)
    assert table[0][:3] == ("DiskAlmostFull", '{"severity": "page"}', "error")
    assert table[0][6] == "no such table: disks"


def test_key_not_returned_by_the_query_is_an_error_on_first_evaluation():
    rule = disk_rule()
    s, ch = step(AlertState(), rule, Outcome(("host", "pct"), [("h", 99)]), 1)
    assert ch == [] and "key column 'mount'" in s.errors["DiskAlmostFull"][1]


def test_annotation_column_not_returned_is_an_error():
    (rule,) = parse_alerts_yaml(
        "- {alert: A, sql: SELECT a FROM t, annotations: {summary: '{a} {nope}'}}"
    )
    s, ch = step(AlertState(), rule, Outcome(("a",), [(1,)]), 1)
    assert "{nope}" in s.errors["A"][1]


def test_error_rule_from_file_is_listed_and_not_evaluated():
    rules = parse_alerts_yaml("- {alert: A, sql: DROP TABLE x}")
    s, ch = evaluate(AlertState(), rules, {}, 1, 1.0)
    assert ch == [] and "Only SELECT" in s.errors["A"][1]


def test_rule_removed_from_the_file_resolves_its_instances():
    rule = disk_rule()
    s, _ = step(AlertState(), rule, rows(("h", "/", 99)), 1)
    s, _ = step(s, rule, rows(("h", "/", 99)), 2)
    s, ch = evaluate(s, [], {}, 3, 3.0)
    assert [i.state for i in ch] == [RESOLVED]


def test_table_rows_and_file_error_row():
    rule = disk_rule()
    s, _ = step(AlertState(), rule, rows(("h", "/", 99)), 1)
    out = table_rows(s, file_error="alerts.yaml: not valid YAML")
    assert out[0][0] == "alerts_file" and out[0][2] == "error"
    name, labels, state, since, last, annotations, error = out[1]
    assert (name, state, since, last, error) == ("DiskAlmostFull", "pending", 1.0, 1.0, "")
    assert json.loads(labels) == {"host": "h", "mount": "/", "severity": "page"}
    assert json.loads(annotations) == {"summary": "h:/ is 99% full"}
    assert counts_by_state(s, "x") == {
        ("alerts_file", "error"): 1,
        ("DiskAlmostFull", "pending"): 1,
    }


def test_alertmanager_payload_firing_and_resolved():
    rule = disk_rule()
    s, _ = step(AlertState(), rule, rows(("h", "/", 99)), 100)
    s, (firing,) = step(s, rule, rows(("h", "/", 99)), 130)
    body = alertmanager_alert(firing, "http://q/alerts", 130.0, 90.0)
    assert body == {
        "labels": {"alertname": "DiskAlmostFull", "host": "h", "mount": "/", "severity": "page"},
        "annotations": {"summary": "h:/ is 99% full"},
        "startsAt": rfc3339(130.0),
        "endsAt": rfc3339(220.0),
        "generatorURL": "http://q/alerts",
    }
    s, (resolved,) = step(s, rule, rows(), 160)
    assert alertmanager_alert(resolved, "u", 170.0, 90.0)["endsAt"] == rfc3339(160.0)


def test_annotation_format_spec():
    (rule,) = parse_alerts_yaml(
        "- alert: A\n  sql: SELECT p FROM t\n  annotations: {s: '{p:.1f}% {p:>6.2f}'}\n"
    )
    assert rule.error is None
    s, (inst,) = step(AlertState(), rule, Outcome(("p",), [(12.345,)]), 1)
    assert dict(inst.annotations) == {"s": "12.3%  12.35"}


def test_rfc3339():
    assert rfc3339(0.25) == "1970-01-01T00:00:00.250Z"


def test_too_many_rows_keep_the_first_instances_and_add_an_error_row():
    from qasino.core.alerts import MAX_INSTANCES_PER_ALERT

    (rule,) = parse_alerts_yaml("- {alert: A, sql: SELECT n FROM t}")
    many = Outcome(("n",), [(i,) for i in range(MAX_INSTANCES_PER_ALERT + 5)])
    s, ch = step(AlertState(), rule, many, 1)
    assert len(ch) == MAX_INSTANCES_PER_ALERT == len(s.instances)
    assert "only the first" in s.errors["A"][1]


def test_default_key_columns_must_make_label_names():
    (rule,) = parse_alerts_yaml("- {alert: A, sql: SELECT count(*) FROM t}")
    s, ch = step(AlertState(), rule, Outcome(("count(*)",), [(3,)]), 1)
    assert ch == [] and "cannot be a label name" in s.errors["A"][1]
    (rule,) = parse_alerts_yaml("- {alert: A, sql: SELECT 'x' AS alertname}")
    s, ch = step(AlertState(), rule, Outcome(("alertname",), [("x",)]), 1)
    assert ch == [] and "reserved" in s.errors["A"][1]


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
_docs = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(["alert", "sql", "for", "key", "labels", "annotations", "x"]),
            inner,
            max_size=6,
        ),
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_docs)
def test_any_yaml_document_is_rules_or_a_file_error_never_a_crash(doc):
    import yaml

    try:
        text = yaml.safe_dump(doc)
    except yaml.YAMLError:
        return
    try:
        rules = parse_alerts_yaml(text)
    except AlertsFileError:
        return
    for rule in rules:
        assert isinstance(rule, AlertRule)
        # Every rule evaluates (or errors) without raising.
        evaluate(AlertState(), [rule], {rule.alert: Outcome(("a",), [(1,)])}, 1, 1.0)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_rules_or_a_file_error(text):
    try:
        parse_alerts_yaml(text)
    except AlertsFileError:
        pass


@pytest.fixture(params=["libyaml", "python"])
def yaml_loader(request, monkeypatch):
    """Both safe loaders: libyaml's (used when PyYAML has it) and the
    pure-Python one (which lets lone surrogate escapes through)."""
    import yaml

    import qasino.core.alerts as alerts

    if request.param == "python":
        monkeypatch.setattr(alerts, "_SAFE_LOADER", yaml.SafeLoader)
    elif not hasattr(yaml, "CSafeLoader"):
        pytest.skip("PyYAML without libyaml")
    return request.param


def test_a_lone_surrogate_never_reaches_a_rule(yaml_loader):
    text = '- {alert: A, sql: SELECT 1, labels: {a: "\\ud800"}}\n- {alert: B, sql: SELECT 1}\n'
    try:
        rules = parse_alerts_yaml(text)
    except AlertsFileError as e:
        assert yaml_loader == "libyaml" and "escape" in e.message
        return
    assert "not valid Unicode" in (rules[0].error or "") and rules[1].error is None


def test_a_rule_with_a_bad_name_is_listed_under_its_place_in_the_file(yaml_loader):
    text = '- {alert: Good, sql: SELECT 1}\n- {alert: "bad \\u00e9\\ud800", sql: SELECT 1}\n'
    try:
        rules = parse_alerts_yaml(text)
    except AlertsFileError:
        assert yaml_loader == "libyaml"
        rules = parse_alerts_yaml(
            '- {alert: Good, sql: SELECT 1}\n- {alert: "bad \\u00e9", sql: SELECT 1}\n'
        )
    assert rules[1].alert == "rule2" and "invalid alert name" in (rules[1].error or "")
    rows = table_rows(evaluate(AlertState(), rules, {}, 1, 1.0)[0])
    for row in rows:  # every text can be stored (valid UTF-8)
        for cell in row:
            if isinstance(cell, str):
                cell.encode("utf-8")
