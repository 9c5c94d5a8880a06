"""Generate docs/config.md from the defaults and their comments: `python -m playitback.config.doc > docs/config.md`.

A test checks that the committed page matches, so the documentation cannot drift from the code.
"""
from __future__ import annotations

import inspect
import re

from playitback.config import defaults

_ASSIGNMENT = re.compile(r"^_C\.([A-Z0-9_.]+) = (.+)$")


def config_reference() -> str:
    """Markdown: every key, its default and its comment, grouped by node, then the removed keys of the original."""
    lines = ["# Config keys", "",
             "Generated from `playitback/config/defaults.py` by `python -m playitback.config.doc`; do not edit.",
             "Set keys in a YAML file (`_BASE_: other.yaml` inherits, relative to the file) or on the command line as "
             "`KEY VALUE`.", ""]
    comment: list[str] = []
    node = None
    for raw in inspect.getsource(defaults).splitlines():
        line = raw.strip()
        if line.startswith("# ---") or not line:
            comment = []
            continue
        if line.startswith("#"):
            comment.append(line.lstrip("# ").strip())
            continue
        match = _ASSIGNMENT.match(line)
        if match is None:
            comment = []
            continue
        key, value = match.groups()
        if value == "CfgNode()":
            node = key
            lines += ["", f"## {node}", "", "| key | default | meaning |", "|---|---|---|"]
        else:
            if node is None or "." not in key:
                if node != "(run)":
                    node = "(run)"
                    lines += ["", "## Run", "", "| key | default | meaning |", "|---|---|---|"]
            meaning = " ".join(comment).replace("|", "\\|")
            if not meaning:
                raise ValueError(f"config key {key} has no comment above it in playitback/config/defaults.py; "
                                 "every key needs a one-line meaning for docs/config.md")
            lines.append(f"| `{key}` | `{value}` | {meaning} |")
        comment = []
    lines += ["", "## Keys of the original that are ignored (with a warning)", "", "| key | why |", "|---|---|"]
    lines += [f"| `{key}` | {why} |" for key, why in defaults.REMOVED_KEYS.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(config_reference(), end="")
