"""The README's "Try it" examples work as printed (issue 11, point 3): its
JSON and CSV publishes are run with bash and curl against a real server,
then its queries, whose output must be the README's own."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import HOST, QasinoProcess
from tests.server_process import REPO_ROOT

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")

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
