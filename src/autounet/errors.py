"""Error types that the command line turns into one-line messages.

Every error a user can cause derives from AutounetError; its message must name the
offending file or key and say what to do. Anything else escaping to the CLI is a bug
and is shown with its traceback.
"""

from __future__ import annotations


class AutounetError(Exception):
    """A problem the user can fix; the CLI prints `error: <message>` and exits 2."""


class DatasetError(AutounetError):
    """A task folder, dataset.json or an input file is missing or malformed."""


class ImageReadError(DatasetError):
    """An image file cannot be read as a medical image."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class IntegrityError(DatasetError):
    """One or more integrity problems in a task; all of them are listed."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        head = f"{len(self.problems)} problem(s) found in the task; nothing was written"
        super().__init__(head + ":\n  - " + "\n  - ".join(self.problems))


class PlansError(AutounetError):
    """plans.json (or another JSON contract file) is missing or invalid; names the key."""


class CheckpointError(AutounetError):
    """A checkpoint is missing, truncated or refused (e.g. it holds pickled objects)."""


class WorkerError(AutounetError):
    """A background worker failed; carries the item it was on and its traceback."""

    def __init__(self, item: str, detail: str) -> None:
        super().__init__(f"worker failed on {item}: {detail}")
        self.item = item
        self.detail = detail
        self.traceback: str | None = None


MAX_LINE_CHARS = 600
MAX_LINES = 60


def shorten_message(text: str, max_line: int = MAX_LINE_CHARS, max_lines: int = MAX_LINES) -> str:
    """An error message fit for a terminal: each line at most `max_line` characters and at most
    `max_lines` lines, saying how much was left out (a bad input must never print megabytes)."""
    lines = text.splitlines() or [""]
    out = [line if len(line) <= max_line else f"{line[:max_line]}... ({len(line) - max_line:,} more characters)"
           for line in lines[:max_lines]]
    if len(lines) > max_lines:
        out.append(f"  ... and {len(lines) - max_lines} more line(s)")
    return "\n".join(out)
