"""Rewrite the README's command reference from the CLI's own --help output."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from autounet.cli import command_reference

BEGIN = "<!-- BEGIN COMMAND REFERENCE -->"
END = "<!-- END COMMAND REFERENCE -->"


def updated(readme: str) -> str:
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(readme):
        raise SystemExit(f"README.md has no {BEGIN} ... {END} section")
    return pattern.sub(lambda _: f"{BEGIN}\n{command_reference()}{END}", readme)


if __name__ == "__main__":
    path = Path(__file__).resolve().parents[1] / "README.md"
    path.write_text(updated(path.read_text(encoding="utf-8")), encoding="utf-8")
    sys.stdout.write(f"updated {path}\n")
