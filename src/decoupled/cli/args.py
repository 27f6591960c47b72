"""What every ``decoupled`` command shares: one-line errors, argument types, and loading user code.

A command's ``run(args)`` raises :class:`UsageError` for a mistake in its arguments and
:class:`SetupError` when the user's own code (a setup or task file) fails; :func:`decoupled.cli.main`
turns them into one line on stderr and the exit codes below, so no traceback reaches a user
for a mistake of theirs.

==========  =====================================================================
exit code   meaning
==========  =====================================================================
0           done (``doctor``: no error findings)
1           ``doctor`` found errors in the setup it checked
2           bad arguments or input files (:class:`UsageError`)
3           the user's setup or task code raised (:class:`SetupError`)
130         interrupted (Ctrl-C)
==========  =====================================================================
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import os
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

EXIT_USAGE = 2
EXIT_SETUP = 3


class UsageError(Exception):
    """A mistake in a command's arguments or input: printed as one line, exit code 2."""


class SetupError(Exception):
    """The user's own code (a setup, model or task) failed: printed with where it failed, exit code 3."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, except that a mistake is a :class:`UsageError` (one line, exit code 2)
    rather than the usage text followed by the error. Subcommand parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


# ---- argument types (argparse calls them; a ValueError/ArgumentTypeError becomes exit code 2) ----


def positive_int(text: str) -> int:
    """An integer >= 1 (a count: epochs, seeds, workers, rounds)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (a learning rate, a batch size, a duration)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number >= 0 (a weight decay)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


# ---- loading user code ------------------------------------------------------------------------


def load_attr(spec: str, *, what: str = "setup") -> Any:
    """The object named by ``'package.module:attr'`` or ``'path/to/file.py:attr'``.

    A file is imported under a name that depends only on its path (so worker processes that
    load the same file agree on it), with its folder on ``sys.path`` so it can import its
    sibling modules. A module is looked up among the installed packages, then in the current
    directory (a console script's ``sys.path`` lacks it). Raises :class:`UsageError` when the
    spec, file, module or attribute does not exist, and :class:`SetupError` when importing the
    user's code raises (a syntax error, a failing import inside it).
    """
    module_part, _, attr = spec.rpartition(":")
    if not module_part or not attr:
        raise UsageError(f"{what} {spec!r} must look like 'package.module:name' or 'path/to/file.py:name'")
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        module = _import_file(Path(module_part), what)
    else:
        module = _import_module(module_part, spec, what)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UsageError(f"{module_part!r} has no attribute {attr!r} (from the {what} {spec!r})") from None


def module_name_for(path: Path) -> str:
    """The module name a user file is imported under: stable across processes (not ``hash()``)."""
    digest = hashlib.sha1(str(path.expanduser().resolve()).encode()).hexdigest()[:12]
    return f"_decoupled_user_{digest}"


def _import_file(path: Path, what: str) -> Any:
    path = path.expanduser().resolve()
    if not path.is_file():
        raise UsageError(f"{what} file {str(path)!r} does not exist")
    name = module_name_for(path)
    if name in sys.modules:
        return sys.modules[name]
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # so the file can import its sibling modules
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as err:
        del sys.modules[name]
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        raise SetupError(_describe_failure(err, f"importing the {what} file {path}")) from err
    return module


def _import_module(name: str, spec: str, what: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is None or not (name == err.name or name.startswith(err.name + ".")):
            raise SetupError(_describe_failure(err, f"importing the {what} module {name!r}")) from err
        cwd = os.getcwd()
        if cwd in sys.path:
            raise UsageError(
                f"no module {name!r} (from {spec!r}) among the installed packages or in the current "
                f"directory {cwd}; run from the folder that holds it, or name its file: "
                f"'path/to/{name.replace('.', '/')}.py:{spec.rpartition(':')[2]}'"
            ) from None
        sys.path.insert(0, cwd)
        return _import_module(name, spec, what)
    except Exception as err:  # the module exists but raised while importing
        raise SetupError(_describe_failure(err, f"importing the {what} module {name!r}")) from err


def call_user(fn: Any, *args: Any, what: str = "setup") -> Any:
    """``fn(*args)``, with any exception it raises reported as a :class:`SetupError`."""
    try:
        return fn(*args)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:
        name = getattr(fn, "__qualname__", repr(fn))
        raise SetupError(_describe_failure(err, f"calling the {what} {name}")) from err


def _describe_failure(err: BaseException, doing: str) -> str:
    """``'<doing> raised <Type>: <message> (at file:line)'``, pointing at the user's last frame."""
    where = ""
    frames = traceback.extract_tb(err.__traceback__)
    if isinstance(err, SyntaxError) and err.filename:
        where = f" (at {err.filename}:{err.lineno})"
    elif frames:
        mine = [f for f in frames if "decoupled" not in Path(f.filename).parts[-3:-1]]
        frame = (mine or frames)[-1]
        where = f" (at {frame.filename}:{frame.lineno})"
    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{doing} raised {type(err).__name__}{': ' + message if message else ''}{where}"
