"""--config FILE, QASINO_* variables and --print-config, over the real server parser."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from qasino.config import env_name, parse_args, render, settings, tomllib
from qasino.server_main import build_parser, config_from_args
from tests.server_process import server_command, server_env


def parse(argv: list[str], env: dict[str, str] | None = None) -> argparse.Namespace:
    return parse_args(build_parser(), argv, env or {})


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "qasino.toml"
    path.write_text(text)
    return str(path)


def test_precedence_is_flag_then_env_then_file_then_default(tmp_path: Path) -> None:
    path = write(tmp_path, "http_port = 1001\nzmq_port = 1002\nline_port = 1003\n")
    env = {"QASINO_HTTP_PORT": "2001", "QASINO_ZMQ_PORT": "2002"}
    args = parse(["--config", path, "--http-port", "3001"], env)
    assert (args.http_port, args.zmq_port, args.line_port) == (3001, 2002, 1003)
    assert args.pubsub_port == 15596  # the default


def test_every_server_flag_has_a_file_key_and_an_env_variable() -> None:
    keys = settings(build_parser())
    assert "generation_duration" in keys and "http_port" in keys and "log_format" in keys
    assert "config" not in keys and "print_config" not in keys and "help" not in keys
    for key, action in keys.items():
        assert env_name(key) == "QASINO_" + action.option_strings[-1][2:].replace("-", "_").upper()


def test_file_values_go_through_the_flags_types(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'generation_duration = 5\nhttp_port = "off"\nhttp_loopback_only = true\n'
        'log_level = "warn"\nidentity = "box1"\n',
    )
    args = parse(["--config", path])
    assert args.generation_duration == 5.0
    assert args.http_port is None
    assert args.http_loopback_only is True
    assert args.log_level == "warning"
    assert config_from_args(args).identity == "box1"


def test_env_booleans_and_the_config_path_itself(tmp_path: Path) -> None:
    path = write(tmp_path, "line_port = 4444\n")
    env = {"QASINO_CONFIG": path, "QASINO_HTTP_LOOPBACK_ONLY": "yes", "QASINO_LOG_LEVEL": "debug"}
    args = parse([], env)
    assert (args.line_port, args.http_loopback_only, args.log_level) == (4444, True, "debug")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("htp_port = 1\n", "unknown setting 'htp_port'"),
        ('http_port = "many"\n', "http_port: invalid value 'many'"),
        ('log_format = "xml"\n', "log_format: invalid choice 'xml'"),
        ('http_loopback_only = "maybe"\n', "expected true or false"),
        ("http_port = [\n", "is not valid TOML"),
    ],
)
def test_a_bad_file_is_an_error_naming_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SystemExit) as exit_:
        parse(["--config", path])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_a_bad_env_value_names_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse([], {"QASINO_ZMQ_PORT": "99999"})
    assert "QASINO_ZMQ_PORT: invalid value '99999'" in capsys.readouterr().err


def test_a_missing_config_file_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["--config", "/nonexistent/qasino.toml"])
    assert "cannot read config file /nonexistent/qasino.toml" in capsys.readouterr().err


def test_render_is_toml_that_reads_back_to_the_same_settings(tmp_path: Path) -> None:
    path = write(tmp_path, "http_port = 1001\n")
    args = parse(["--config", path, "-g", "7"], {"QASINO_BIND": "127.0.0.1"})
    text = render(build_parser(), args)
    assert "http_port = 1001  # file " in text
    assert "generation_duration = 7.0  # flag" in text
    assert 'bind = "127.0.0.1"  # env QASINO_BIND' in text
    assert "# tls_cert =  (not set; default)" in text
    again = parse(["--config", write(tmp_path, tomllib_dump_free(text))])
    for key, action in settings(build_parser()).items():
        assert getattr(again, action.dest) == getattr(args, action.dest), key


def tomllib_dump_free(text: str) -> str:
    """The rendered file, checked to be TOML."""
    tomllib.loads(text)
    return text


def test_print_config_masks_secrets() -> None:
    parser = build_parser()
    parser.add_argument("--alertmanager-url", action="append", default=[])
    parser.add_argument("--nats-password", default=None)
    args = parse_args(
        parser,
        ["--alertmanager-url", "http://u:hunter2@am:9093", "--nats-password", "hunter2"],
        {},
    )
    text = render(parser, args)
    assert "hunter2" not in text
    assert 'alertmanager_url = ["http://u:********@am:9093"]' in text
    assert 'nats_password = "********"' in text


def test_a_flag_added_later_gets_file_and_env_support(tmp_path: Path) -> None:
    parser = build_parser()
    parser.add_argument("--keep-stale", type=int, default=0)
    parser.add_argument("--alertmanager-url", action="append", default=[])
    path = write(tmp_path, 'keep_stale = 3\nalertmanager_url = ["http://a", "http://b"]\n')
    args = parse_args(parser, ["--config", path], {"QASINO_KEEP_STALE": "4"})
    assert args.keep_stale == 4
    assert args.alertmanager_url == ["http://a", "http://b"]


def test_print_config_of_the_real_command_exits_0(tmp_path: Path) -> None:
    path = write(tmp_path, "zmq_port = 1234\n")
    env = dict(server_env(), QASINO_LINE_PORT="off")
    done = subprocess.run(
        server_command(["--config", path, "--print-config", "--http-port", "0"]),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    settings_ = tomllib.loads(done.stdout)
    assert settings_["zmq_port"] == 1234 and settings_["http_port"] == 0
    assert "line_port" not in settings_  # off: no value
    assert "# line_port =  (not set; env QASINO_LINE_PORT)" in done.stdout


def test_a_flag_with_only_a_short_spelling_goes_by_its_dest(tmp_path: Path) -> None:
    parser = build_parser()
    parser.add_argument("-Z", dest="zone_dir", default=None)
    path = write(tmp_path, 'zone_dir = "/etc/zone"\n')
    assert parse_args(parser, ["--config", path], {}).zone_dir == "/etc/zone"
    assert parse_args(parser, [], {"QASINO_ZONE_DIR": "/z"}).zone_dir == "/z"
    assert parse_args(parser, ["-Z", "/flag"], {"QASINO_ZONE_DIR": "/z"}).zone_dir == "/flag"


def test_the_example_file_names_every_setting_and_each_line_is_valid(tmp_path: Path) -> None:
    """contrib/qasino.toml: every commented-out `key = value` line, once
    uncommented, is a valid setting, and together they cover every flag."""
    from tests.server_process import REPO_ROOT

    example = (REPO_ROOT / "contrib" / "qasino.toml").read_text()
    assert parse_args(build_parser(), ["--config", write(tmp_path, example)], {})
    lines = [
        line[2:].split("  #")[0]
        for line in example.splitlines()
        if line.startswith("# ") and " = " in line.split("#")[1]
    ]
    uncommented = write(tmp_path, "\n".join(lines) + "\n")
    args = parse(["--config", uncommented])
    keys = {line.split(" = ")[0] for line in lines}
    missing = set(settings(build_parser())) - keys
    assert not missing, f"add these flags to contrib/qasino.toml: {sorted(missing)}"
    assert keys <= set(settings(build_parser()))
    assert args.generation_duration == 30
