"""One CLI style for every launcher: a misuse prints one ``error: ...`` line on stderr and exits 2.

The absl launchers (``launch.train``, ``launch.train_encoders``, ``launch/info.py``) parse flags
through :func:`parse_flags` (absl's own parser prints a traceback for a config file that raises,
30 lines of usage for a missing flag, and exits 1); the argparse launchers (``launch.generate``,
``launch.export``, ``launch.evaluate``, ``launch.demo``) build an :class:`ArgumentParser`, whose
errors are the same single line instead of argparse's usage block. :func:`output_problem` is the
check a launcher runs on the paths it will write *before* it loads a model.
"""
from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from absl import app, flags
from ml_collections import ConfigDict

EXIT_USAGE = 2


class UsageError(ValueError):
    """A misuse of a launcher (flag, config field, input path): one ``error:`` line, exit 2."""


def fail(message: object) -> NoReturn:
    """Print ``error: <first line of message>`` to stderr and exit 2."""
    text = str(message).strip()
    print(f"error: {text.splitlines()[0] if text else 'bad command line'}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one ``error:`` line (no usage block), exit 2."""

    def error(self, message: str) -> NoReturn:  # argparse's hook for every parsing error
        fail(f"{message} (see {self.prog} --help)")


# ----------------------------------------------------------------------------- absl flags

def _config_spec(argv: Sequence[str], name: str) -> str | None:
    """The ``path[:arg]`` given to ``--<name>`` in argv (last wins, as in absl), or None."""
    spec = None
    for i, a in enumerate(argv):
        if a.startswith(f"--{name}="):
            spec = a.split("=", 1)[1]
        elif a == f"--{name}" and i + 1 < len(argv):
            spec = argv[i + 1]
    return spec


def _overrides(argv: Sequence[str], name: str) -> list[tuple[str, str]]:
    """``[(field_path, raw_arg)]`` of the ``--<name>.a.b=v`` overrides in argv."""
    out = []
    for a in argv:
        if a.startswith(f"--{name}."):
            out.append((a[len(name) + 3:].split("=", 1)[0], a))
    return out


def field_paths(config) -> list[str]:
    """Every declared dotted path of a ``ConfigDict`` (sections and leaves)."""
    paths = []

    def walk(node, prefix):
        for k, v in node.items():
            paths.append(prefix + k)
            if isinstance(v, ConfigDict):
                walk(v, prefix + k + ".")
    walk(config, "")
    return paths


def _has_path(config, path: str) -> bool:
    node = config
    for part in path.split("."):
        if not isinstance(node, ConfigDict):
            return True      # below a leaf: config_flags' own type check reports it
        if part not in node:
            return False
        node = node[part]
    return True


def _unknown_field(argv: Sequence[str], fv: flags.FlagValues, name: str) -> str | None:
    """The one-line message for the first ``--<name>.path`` override naming no declared field."""
    if name not in fv:
        return None
    spec = _config_spec(argv, name)
    try:   # no --<name> in argv: the flag's default config (already parsed at definition)
        config = fv[name].parser.parse(spec) if spec is not None else fv[name].value
        spec = spec or "the default config"
        paths = field_paths(config)
    except Exception:  # noqa: BLE001 - the file itself is broken: reported by the caller
        return None
    for path, _ in _overrides(argv, name):
        if not _has_path(config, path):
            close = difflib.get_close_matches(path, paths, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else " (nor one with a similar name)"
            return f"--{name}.{path}: {spec} has no config field '{path}'{hint}"
    return None


def _flag_error_line(err: Exception) -> str:
    """absl / config_flags error text -> one line (a config file's own exception, not its trace)."""
    text = str(err).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    head = lines[0].removeprefix("flag ")
    if "Error whilst parsing config file" in text:   # config_flags embeds the whole traceback
        head = head.split(": Error whilst parsing", 1)[0]
        return f"{head}: {lines[-1].split(': ', 1)[-1]}"   # drop the exception's class name
    return head


def _unloadable(argv: Sequence[str], fv: flags.FlagValues, names: Sequence[str]) -> str | None:
    """A config flag whose file could not be loaded (config_flags defers that error to first use)."""
    for name in names:
        if name not in fv:
            continue
        value = fv[name].value
        if value is None:
            continue
        try:
            value.keys()
        except OSError as e:
            detail = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            return f"--{name}={_config_spec(argv, name)}: cannot load the config file ({detail[-1]})"
    return None


def parse_flags(argv: Sequence[str], fv: flags.FlagValues = flags.FLAGS, *,
                config_names: Sequence[str] = ("config",)) -> list[str]:
    """``fv(argv)`` (argv[0] is the program) with every problem raised as a one-line
    :class:`UsageError`: unknown flags, bad values, a config file or variant that raises, a config
    file that does not exist, and an override of an undeclared field (with a "did you mean")."""
    argv = list(argv)
    try:
        rest = fv(argv)
    except (KeyError, AttributeError, OSError, flags.Error) as e:
        # an undeclared field of a locked ConfigDict surfaces as KeyError/AttributeError from
        # config_flags (or as a flags.Error, depending on the path): name it, with a suggestion
        for name in config_names:
            msg = _unknown_field(argv[1:], fv, name)
            if msg:
                raise UsageError(msg) from None
        if isinstance(e, flags.Error):
            raise UsageError(_flag_error_line(e)) from None
        if isinstance(e, OSError):   # a missing config file, met while applying an override
            detail = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
            for name in config_names:
                if _config_spec(argv[1:], name) is not None:
                    raise UsageError(f"--{name}={_config_spec(argv[1:], name)}: cannot load the "
                                     f"config file ({detail[-1]})") from None
        raise UsageError(f"{type(e).__name__}: {_flag_error_line(e)}") from None
    msg = _unloadable(argv[1:], fv, config_names)
    if msg:
        raise UsageError(msg)
    return rest


def require(fv: flags.FlagValues, **examples: str) -> None:
    """A one-line :class:`UsageError` for the first of the flags ``examples`` names that is
    unset: ``require(FLAGS, workdir="/tmp/run")`` -> ``--workdir is required (e.g. --workdir=/tmp/run)``."""
    for name, example in examples.items():
        if fv[name].value in (None, ""):
            raise UsageError(f"--{name} is required (e.g. --{name}={example})")


def run(main: Callable[[list[str]], int | None], fv: flags.FlagValues = flags.FLAGS, *,
        config_names: Sequence[str] = ("config",)) -> NoReturn:
    """``absl.app.run(main)`` with flag problems and a :class:`UsageError` raised by ``main``
    reported as one ``error:`` line, exit 2; otherwise exits with ``main``'s return value."""
    def parser(argv):
        try:
            return parse_flags(argv, fv, config_names=config_names)
        except UsageError as e:
            fail(e)

    def wrapped(argv):
        try:
            rc = main(argv)
        except UsageError as e:
            fail(e)
        sys.exit(rc or 0)

    app.run(wrapped, flags_parser=parser)
    sys.exit(0)   # app.run exits itself; this line only satisfies NoReturn


# ----------------------------------------------------------------------------- output paths

def output_problem(path: str, *, flag: str = "--out", is_dir: bool = False) -> str | None:
    """Why ``path`` cannot be written (one line), or None: checked before any model is loaded.

    A file output needs its parent to be a directory or creatable (no ancestor is a file) and
    itself not to be a directory; a directory output must not be an existing file."""
    path = os.path.abspath(path)
    if is_dir:
        if os.path.exists(path) and not os.path.isdir(path):
            return f"{flag} {path}: exists and is not a directory"
    elif os.path.isdir(path):
        return f"{flag} {path}: is a directory"
    parent = path if is_dir else os.path.dirname(path)
    probe = parent
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe) if os.path.dirname(probe) != probe else ""
    if probe and not os.path.isdir(probe):
        return f"{flag} {path}: {probe} is a file, not a directory"
    if probe and not os.access(probe, os.W_OK | os.X_OK):
        return f"{flag} {path}: {probe} is not writable"
    return None
