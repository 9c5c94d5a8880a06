"""Small helpers shared by the command-line tools."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fvcore.common.config import CfgNode


def report_failures(failures: Sequence[tuple[object, str]]) -> int:
    """Print the (item, message) failures of a batch tool to stderr; returns its exit status (1 if any failed)."""
    if not failures:
        return 0
    print(f"{len(failures)} file(s) failed:", file=sys.stderr)
    for _, message in failures:
        print(f"  {message}", file=sys.stderr)
    return 1


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
