"""The examples of README.md and docs/protocol.md work as printed (issue 11,
point 3): the README's JSON and CSV publishes are run with bash and curl
against a real server, then its queries, whose output must be the README's
own; docs/protocol.md's request bodies are sent as they stand, its index
file example parses, and its list of internal tables is the server's."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from qasino.clients.csvpublisher import IndexEntry, parse_index
from qasino.store.internal import INTERNAL_TABLES
from tests.e2e.conftest import HOST, QasinoProcess, http_request, request_target
from tests.server_process import REPO_ROOT

PROTOCOL_DOC = REPO_ROOT / "docs" / "protocol.md"


def doc_blocks(path: Path) -> list[tuple[str, str]]:
    return FENCE_RE.findall(path.read_text())


NEEDS_CURL = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")

FENCE_RE = re.compile(r"```(\w*)\n(.*?)```", re.S)


def try_it_blocks() -> list[tuple[str, str]]:
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("## Try it", 1)[1].split("\n## ", 1)[0]
    return FENCE_RE.findall(section)


def run(script: str, port: int, cwd: Path) -> str:
    script = script.replace("localhost:15597", f"{HOST}:{port}")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done
    return done.stdout


@NEEDS_CURL
def test_readme_json_and_csv_examples_work_as_printed(
    start_server: Callable[..., QasinoProcess], tmp_path: Path
) -> None:
    blocks = try_it_blocks()
    publish = next(body for lang, body in blocks if "add_csv_table_data" in body)
    queries = next(body for lang, body in blocks if lang == "sh" and "op=query" in body)
    printed = next(body for lang, body in blocks if lang == "" and "rows returned" in body)
    assert "op=add_table_data" in publish

    server = start_server("readme", generation_s=3).start()
    port = server.ports["http"]
    replies = run(publish, port, tmp_path)
    assert replies.count('"response_op":"ok"') == 2, replies

    deadline = time.monotonic() + 15
    while True:
        out = run(queries, port, tmp_path)
        if out == printed or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert out == printed


def test_protocol_doc_request_and_csv_examples_are_accepted_as_printed(
    start_server: Callable[..., QasinoProcess],
) -> None:
    blocks = doc_blocks(PROTOCOL_DOC)
    request = next(b for lang, b in blocks if lang == "json" and '"add_table_data"' in b)
    csv_body = next(b for lang, b in blocks if lang == "" and b.startswith("identity=host1\n"))
    server = start_server("doc", generation_s=600).start()
    port = server.ports["http"]
    for op, body in (("add_table_data", request), ("add_csv_table_data", csv_body)):
        reply = http_request(port, "POST", request_target(op=op), body.encode())
        assert reply.json()["response_op"] == "ok", (op, reply)
    seen = http_request(
        port, "GET", request_target(op="query", use_write_db="1", sql="SELECT count(*) FROM disks")
    ).json()
    assert seen["table"]["rows"] == [["2"]], seen


def test_protocol_doc_index_example_parses_to_its_three_tables() -> None:
    index = next(b for lang, b in doc_blocks(PROTOCOL_DOC) if lang == "" and b.startswith("1\n"))
    assert parse_index(index, "/data/index.txt") == [
        IndexEntry("disks", "/data/disks.csv"),
        IndexEntry("cpu", "/data/cpu.csv"),
        IndexEntry("mem", "/data/sub/mem_stats.csv"),
    ]


def test_protocol_doc_lists_every_internal_table_with_its_columns() -> None:
    text = PROTOCOL_DOC.read_text().split("## Internal tables", 1)[1].split("\n## ", 1)[0]
    documented = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`qasino_server_"):
            documented[cells[0].strip("`")] = re.findall(r"`(\w+)`", cells[1])
    assert documented == {
        name: [column for column, _ in columns] for name, columns in INTERNAL_TABLES.items()
    }


def test_protocol_doc_python_publisher_runs_as_printed(
    start_server: Callable[..., QasinoProcess], tmp_path: Path
) -> None:
    code = next(b for lang, b in doc_blocks(PROTOCOL_DOC) if lang == "python")
    server = start_server("pypub", generation_s=1).start()
    code = code.replace('HOST = "localhost"', f'HOST = "{HOST}"')
    code = code.replace(":15596", f":{server.ports['pubsub']}")
    code = code.replace(":15598", f":{server.ports['zmq']}")
    script = tmp_path / "publisher.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done
    lines = done.stdout.split()
    assert lines[1::2] == ["ok", "ok"], done.stdout
    first, second = int(lines[0]), int(lines[2])
    assert second > first
