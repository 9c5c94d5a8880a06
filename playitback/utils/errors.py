"""The base class of every error a user causes and can fix (a config key, a path, a file, a checkpoint).

Command-line tools print such an error as one line, ``error: <message>``, and exit with :data:`USER_ERROR_EXIT`; the
message names the thing and the fix, so a traceback would only bury it. ``PLAYITBACK_DEBUG=1`` (or a tool's
``--debug``) lets the error propagate with its traceback instead.
"""
from __future__ import annotations

import os

USER_ERROR_EXIT = 2
DEBUG_ENV = "PLAYITBACK_DEBUG"


class UserError(Exception):
    """An error the user can fix; its message names what is wrong and how to fix it."""


class ReportedUserError(UserError):
    """A process of a multi-process job stopped on a UserError it already printed; the launching process only has to
    exit with :data:`USER_ERROR_EXIT`."""


def debugging() -> bool:
    """Whether user errors should propagate with their tracebacks (PLAYITBACK_DEBUG set to anything but 0 or empty)."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")
