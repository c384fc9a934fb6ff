"""The history.T renaming (qasino.core.history_sql): only real references change."""

from __future__ import annotations

import pytest

from qasino.core.history_sql import rewrite_history


@pytest.mark.parametrize(
    ("sql", "expected", "names"),
    [
        (
            "SELECT * FROM history.net",
            'SELECT * FROM temp."history.net"',
            ("net",),
        ),
        (
            'select a from HISTORY . "Net" join history.[cpu] using (a)',
            'select a from temp."history.net" join temp."history.cpu" using (a)',
            ("net", "cpu"),
        ),
        (
            "SELECT history.net.bytes FROM history.net",
            'SELECT temp."history.net".bytes FROM temp."history.net"',
            ("net",),
        ),
        (
            "SELECT history /* c */ . -- d\n net.x FROM t",
            'SELECT temp."history.net".x FROM t',
            ("net",),
        ),
    ],
)
def test_history_references_become_the_temp_views(
    sql: str, expected: str, names: tuple[str, ...]
) -> None:
    assert rewrite_history(sql) == (expected, names)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 'history.net' FROM t",
        'SELECT "history.net" FROM t',
        "SELECT * FROM t -- history.net",
        "SELECT * FROM t /* history.net */",
        "SELECT * FROM main.history.net",
        "SELECT * FROM history",
        "SELECT history FROM t",
        "SELECT * FROM history.",
        "SELECT * FROM history.'x'",
        "SELECT * FROM history.[bad name]",
        "SELECT 'unterminated history.net",
    ],
)
def test_text_that_is_not_a_history_reference_is_left_alone(sql: str) -> None:
    assert rewrite_history(sql) == (sql, ())
