"""Small helpers shared by the command-line tools."""
from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from fvcore.common.config import CfgNode

from playitback.utils.errors import USER_ERROR_EXIT, ReportedUserError, UserError, debugging


def report_failures(failures: Sequence[tuple[object, str]]) -> int:
    """Print the (item, message) failures of a batch tool to stderr; returns its exit status (1 if any failed)."""
    if not failures:
        return 0
    print(f"{len(failures)} file(s) failed:", file=sys.stderr)
    for _, message in failures:
        print(f"  {message}", file=sys.stderr)
    return 1


def exit_on_user_error(main: Callable[[], int]) -> int:
    """`main()`, with a user error (a UserError: a bad key, path, file or checkpoint) printed as one line
    ``error: <message>`` and exit status 2 instead of a traceback; with PLAYITBACK_DEBUG=1 it propagates."""
    try:
        return main()
    except UserError as err:
        if debugging():
            raise
        if not isinstance(err, ReportedUserError):  # else the process that raised it has printed it
            print(f"error: {user_message(err)}", file=sys.stderr)
        return USER_ERROR_EXIT


def user_message(err: UserError) -> str:
    """The message of a user error. One raised in a DataLoader worker comes back with the worker's traceback in its
    message ("Caught ... in DataLoader worker process 0. Original Traceback ..."), whose last line is the error."""
    message = str(err)
    if "Original Traceback" in message:
        message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return message


def config_tool_parser(description: str | None) -> argparse.ArgumentParser:
    """The parser of a tool that reads a config: ``--cfg FILE``, the tool's own flags, then ``KEY VALUE`` overrides."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", required=True, help="YAML config file (may inherit with _BASE_)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides (after the flags)")
    return parser


def load_tool_config(args: argparse.Namespace) -> CfgNode | None:
    """The config of ``--cfg`` with the overrides, or None after printing the config problems to stderr."""
    from playitback.config import ConfigError, load_config

    try:
        return load_config(args.cfg, args.opts)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return None


def find_files(inputs: Iterable[str | Path], extensions: Sequence[str],
               what: str = "audio") -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
    """The files named by ``inputs``: a file as it is, a folder searched recursively for ``extensions``.

    Args:
        inputs: Files and folders.
        extensions: Lower-case suffixes with the dot (e.g. ``playitback.data.audio_io.AUDIO_EXTENSIONS``) that count
            inside folders; a file named directly is taken whatever its suffix.
        what: What the files are, for the messages ("no audio files ...").

    Returns:
        ``(files, problems)``: ``files`` holds (file, its path relative to its input folder) pairs, sorted within each
        folder (a file named directly is relative to its own folder); ``problems`` holds an (input, message) pair per
        input that is missing or a folder without such files. The caller decides whether a problem stops the tool.
    """
    files: list[tuple[Path, Path]] = []
    problems: list[tuple[Path, str]] = []
    for item in map(Path, inputs):
        if item.is_file():
            files.append((item, Path(item.name)))
        elif item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
            if not found:
                problems.append((item, f"{item}: no {what} files ({', '.join(extensions)}) in this folder or below"))
            files.extend((path, path.relative_to(item)) for path in found)
        else:
            problems.append((item, f"{item}: no such file or folder; check the path"))
    return files, problems


# A config key as written on the command line: upper-case words joined by dots (SOLVER.BASE_LR, NUM_GPUS).
_KEY = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)*")


def split_overrides(tokens: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split a tool's positional arguments from the ``KEY VALUE`` overrides that follow them (as ``run_net.py``).

    The overrides start at the first token written like a config key that is not an existing path, so a mistyped
    key still reaches the config loader (which names the closest valid key) instead of being taken for a file.

    Returns:
        (positional arguments, overrides).
    """
    for index, token in enumerate(tokens):
        if _KEY.fullmatch(token) and not Path(token).exists():
            return list(tokens[:index]), list(tokens[index:])
    return list(tokens), []
