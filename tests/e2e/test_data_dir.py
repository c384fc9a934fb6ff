"""One server per data directory, and a server that heals its own files
(issue 11, point 1). Real server processes on one --db-dir."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.e2e.conftest import (
    QasinoProcess,
    assert_ok,
    http_publish,
    http_query,
    make_table,
    publish_request,
    rows_of,
    run_server_to_exit,
)
from tests.server_process import with_ports

COLUMNS = [("host", "text"), ("n", "integer")]


def publish(server: QasinoProcess, tablename: str, identity: str, n: int, **opts: Any) -> None:
    table = make_table(tablename, COLUMNS, [[identity, n]])
    assert_ok(http_publish(server.ports["http"], publish_request(identity, table, **opts)))


def served_rows(server: QasinoProcess, sql: str) -> list[list[str]]:
    return rows_of(http_query(server.ports["http"], sql))


def publish_and_see_it_served(server: QasinoProcess, tablename: str, n: int) -> None:
    """Publish, wait for the next snapshot, find the row there."""
    gen = server.wait_generation()
    publish(server, tablename, "h1", n)
    server.wait_generation(after=gen["generation_number"])
    assert served_rows(server, f"SELECT host, n FROM {tablename}") == [["h1", str(n)]]


def tree(path: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under ``path``: (inode, size, mtime_ns)."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            st = os.stat(full)
            out[os.path.relpath(full, path)] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def test_second_server_on_the_same_db_dir_exits_1_with_one_line_and_the_first_keeps_serving(
    start_server: Callable[..., QasinoProcess],
) -> None:
    """The issue's sequence: a second start on the same --db-dir, on other ports
    and on the same ports; the first goes on answering, taking publishes and
    rotating, and loses nothing."""
    first = start_server("first", generation_s=1).start()
    assert first.proc is not None
    db_dir = first.workdir / "db"
    publish(first, "persisted", "h0", 7, persist=1)
    publish_and_see_it_served(first, "before", 1)

    for label, args in (
        ("other ports", list(first.args)),
        ("same ports", with_ports(first.args, first.ports)),
    ):
        done = run_server_to_exit(args, first.workdir)
        assert done.returncode == 1, (label, done)
        assert done.stdout == "", (label, done.stdout)
        lines = done.stderr.splitlines()
        assert len(lines) == 1, (label, done.stderr)
        assert str(db_dir) in lines[0], lines[0]
        assert f"process {first.proc.pid}" in lines[0], lines[0]
        assert "Address already in use" not in lines[0]

    # The first server: queries, publishes, rotations as before.
    assert first.alive()
    publish_and_see_it_served(first, "after", 2)
    assert served_rows(first, "SELECT host, n FROM persisted") == [["h0", "7"]]
    for _ in range(2):
        first.wait_generation()
    log = first.log_text()
    assert "rotation failed" not in log
    assert "cannot open generation" not in log
    assert first.stop() == 0


def test_second_start_changes_nothing_in_the_directory(
    start_server: Callable[..., QasinoProcess],
) -> None:
    """With the first server stopped in the middle of nothing (a long
    generation), a second start that fails leaves every file as it was."""
    first = start_server("quiet", generation_s=600).start()
    publish(first, "stat", "h1", 1, static=1)
    publish(first, "pending", "h1", 2)  # acknowledged, in the writer generation
    db_dir = first.workdir / "db"
    before = tree(db_dir)
    done = run_server_to_exit(list(first.args), first.workdir)
    assert done.returncode == 1, done
    assert tree(db_dir) == before
    written = http_query(first.ports["http"], "SELECT host, n FROM pending", use_write_db=True)
    assert rows_of(written) == [["h1", "2"]]
    assert first.stop() == 0
    # Once the holder is gone the directory is free again.
    second = start_server("quiet").start()
    assert served_rows(second, "SELECT host, n FROM stat") == [["h1", "1"]]
    assert second.stop() == 0


def test_server_heals_when_its_generation_files_are_deleted_and_loses_no_acked_row(
    start_server: Callable[..., QasinoProcess],
) -> None:
    """``rm -rf DB/generations`` (and the static DB) under a running server:
    it logs it, goes on with new files within one generation, and every
    acknowledged row, static one included, is served."""
    server = start_server("heal", generation_s=1).start()
    publish(server, "stat", "h1", 5, static=1)
    gen = server.wait_generation()
    publish(server, "acked", "h1", 3)
    db_dir = server.workdir / "db"
    shutil.rmtree(db_dir / "generations")
    os.unlink(db_dir / "static.sqlite")
    # The rows acknowledged before the deletion are in the next snapshot.
    server.wait_generation(after=gen["generation_number"])
    assert served_rows(server, "SELECT host, n FROM acked") == [["h1", "3"]]
    assert served_rows(server, "SELECT host, n FROM stat") == [["h1", "5"]]
    log = server.log_text()
    assert "was deleted or replaced under the server" in log
    assert "nothing lost" in log
    # And it goes on: publish, rotate, query; the static DB is a file again.
    publish_and_see_it_served(server, "later", 4)
    assert (db_dir / "static.sqlite").exists()
    assert "rotation failed" not in server.log_text()
    assert server.stop() == 0
    # The static table survived on disk too.
    again = start_server("heal", generation_s=1)
    again.start()
    assert served_rows(again, "SELECT host, n FROM stat") == [["h1", "5"]]
    assert again.stop() == 0
