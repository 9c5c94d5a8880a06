"""Small helpers shared by the command-line tools."""
from __future__ import annotations

import sys
from collections.abc import Sequence


def report_failures(failures: Sequence[tuple[object, str]]) -> int:
    """Print the (item, message) failures of a batch tool to stderr; returns its exit status (1 if any failed)."""
    if not failures:
        return 0
    print(f"{len(failures)} file(s) failed:", file=sys.stderr)
    for _, message in failures:
        print(f"  {message}", file=sys.stderr)
    return 1
