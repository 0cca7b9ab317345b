"""User-facing errors: the CLI prints these as one line and exits non-zero, never a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake in the user's input (name, config, file); the message says what to do."""


class ConfigError(UserError):
    """A config field with a wrong type, unknown name or impossible value."""


class DataError(UserError):
    """A dataset that is missing, empty, of the wrong format or holds unreadable files."""


class CheckpointError(UserError):
    """A checkpoint that is corrupt, truncated, unsafe or from another run."""


def suggest(name: str, choices: Iterable[str], what: str) -> str:
    """A one-line 'unknown X' message with the closest valid names ("did you mean")."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    sep = "" if what.endswith(".") else " "
    msg = f"unknown {what}{sep}{name!r}" if sep == " " else f"unknown {what}{name}"
    if close:
        msg += f"; did you mean {', '.join(repr(c) for c in close)}?"
    if choices:
        msg += f" (available: {', '.join(choices)})"
    return msg
