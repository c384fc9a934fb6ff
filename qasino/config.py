"""Server settings from flags, ``QASINO_*`` environment variables and a TOML file.

Generic over an :mod:`argparse` parser: every long flag ``--some-flag`` is
also the file key ``some_flag`` and the variable ``QASINO_SOME_FLAG``, so a
flag added to the parser gets both with no extra code. Precedence: flag >
environment > file > default. Values from the file and the environment go
through the flag's own ``type`` and ``choices``, so they are checked like the
flag; an unknown key in the file is an error naming it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Optional

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ENV_PREFIX = "QASINO_"
# Flags that are about this run, not settings.
NOT_SETTINGS = frozenset({"help", "version", "config", "print_config", "http_fd", "ready_fd"})
SECRET_WORDS = ("password", "passwd", "secret", "token", "credential")
MASK = "********"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
_URL_PASSWORD = re.compile(r"(://[^/:@\s]+:)([^@/\s]+)(@)")


class ConfigError(Exception):
    """A bad config file, key or value."""


def setting_key(action: argparse.Action) -> Optional[str]:
    """The file key of a flag (``--http-port`` -> ``http_port``; a flag with
    only a short spelling goes by its ``dest``); None for positionals, help,
    version and the config flags themselves."""
    if not action.option_strings or action.dest == argparse.SUPPRESS:
        return None
    if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
        return None
    longs = [o for o in action.option_strings if o.startswith("--")]
    key = longs[0][2:].replace("-", "_") if longs else action.dest
    return None if key in NOT_SETTINGS else key


def settings(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """key -> action, in the parser's order."""
    found: dict[str, argparse.Action] = {}
    for action in parser._actions:
        key = setting_key(action)
        if key is not None:
            found[key] = action
    return found


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def _flag_kind(action: argparse.Action) -> str:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "bool"
    if isinstance(action, argparse._StoreConstAction):
        return "const"
    if isinstance(action, argparse._CountAction):
        return "count"
    if isinstance(action, (argparse._AppendAction, argparse._ExtendAction)):
        return "list"
    return "value"


def _one(action: argparse.Action, raw: Any, where: str) -> Any:
    """One value through the flag's type and choices."""
    if isinstance(raw, (dict, list)):
        raise ConfigError(f"{where}: expected a single value, got {raw!r}")
    text = raw if isinstance(raw, str) else str(raw).lower() if isinstance(raw, bool) else str(raw)
    convert = action.type
    try:
        value = convert(text) if callable(convert) else text
    except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
        raise ConfigError(f"{where}: invalid value {raw!r}: {e}") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ConfigError(f"{where}: invalid choice {raw!r} (choose from {choices})")
    return value


def _bool(raw: Any, where: str) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in _TRUE + _FALSE:
        return raw.strip().lower() in _TRUE
    raise ConfigError(f"{where}: expected true or false, got {raw!r}")


def convert(action: argparse.Action, raw: Any, where: str, from_env: bool = False) -> Any:
    """A value from the file or the environment as the flag would have parsed it."""
    kind = _flag_kind(action)
    if kind == "bool":
        on = _bool(raw, where)
        return on if isinstance(action, argparse._StoreTrueAction) else not on
    if kind == "const":
        return action.const if _bool(raw, where) else action.default
    if kind == "count":
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {raw!r}") from None
    if kind == "list":
        if from_env and isinstance(raw, str):
            items: list[Any] = [i.strip() for i in raw.split(",") if i.strip()]
        elif isinstance(raw, list):
            items = raw
        else:
            items = [raw]
        return [_one(action, item, where) for item in items]
    return _one(action, raw, where)


def read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    return data


def _config_path(argv: Sequence[str], environ: Mapping[str, str]) -> Optional[str]:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(list(argv))
    return known.config or environ.get(env_name("config")) or None


def layered_defaults(
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    environ: Mapping[str, str],
) -> tuple[dict[str, Any], dict[str, str]]:
    """The values the file and environment give (dest -> value), and where
    each setting came from (key -> "file PATH" / "env NAME")."""
    actions = settings(parser)
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    path = _config_path(argv, environ)
    if path:
        for key, raw in read_file(path).items():
            action = actions.get(key)
            if action is None:
                raise ConfigError(f"config file {path}: unknown setting {key!r}")
            values[action.dest] = convert(action, raw, f"config file {path}: {key}")
            origin[key] = f"file {path}"
    for key, action in actions.items():
        name = env_name(key)
        if name in environ:
            values[action.dest] = convert(action, environ[name], name, from_env=True)
            origin[key] = f"env {name}"
    return values, origin


def parse_args(
    parser: argparse.ArgumentParser,
    argv: Optional[Sequence[str]] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> argparse.Namespace:
    """``parser.parse_args`` with the file and environment layered under the
    flags. A bad file or value exits 2 with the parser's usage and the reason.
    The namespace gets ``_origin`` (key -> where a value came from)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    try:
        values, origin = layered_defaults(parser, argv, environ)
    except ConfigError as e:
        parser.error(str(e))
    saved = {a.dest: a.default for a in parser._actions}
    parser.set_defaults(**values)
    try:
        args = parser.parse_args(argv)
    finally:
        parser.set_defaults(**saved)
    given = _flags_given(parser, argv)
    for key in given:
        origin[key] = "flag"
    args._origin = origin
    return args


def _flags_given(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The setting keys named on the command line (long or short spelling)."""
    by_option: dict[str, str] = {}
    for key, action in settings(parser).items():
        for option in action.option_strings:
            by_option[option] = key
    given = set()
    for word in argv:
        if word == "--":
            break
        option = word.split("=", 1)[0]
        if option in by_option:
            given.add(by_option[option])
        elif option.startswith("-") and not option.startswith("--") and option[:2] in by_option:
            given.add(by_option[option[:2]])  # -g5
    return given


def is_secret(key: str) -> bool:
    return any(word in key.lower() for word in SECRET_WORDS)


def _mask(key: str, value: Any) -> Any:
    if value is None:
        return None
    if is_secret(key):
        return MASK
    if isinstance(value, str):
        return _URL_PASSWORD.sub(lambda m: m.group(1) + MASK + m.group(3), value)
    if isinstance(value, list):
        return [_mask(key, v) for v in value]
    return value


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def render(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The effective settings as a TOML file (secrets masked); a setting
    with no value is shown commented out."""
    origin: dict[str, str] = getattr(args, "_origin", {})
    lines = ["# qasino effective settings (flag > env > file > default)"]
    for key, action in settings(parser).items():
        value = _mask(key, getattr(args, action.dest, None))
        source = origin.get(key, "default")
        if value is None:
            lines.append(f"# {key} =  (not set; {source})")
        else:
            lines.append(f"{key} = {toml_value(value)}  # {source}")
    return "\n".join(lines) + "\n"
