"""An error message is bounded: a bad input must never print megabytes (issue: a 10 MB error line)."""

from __future__ import annotations

import pytest

from autounet import cli
from autounet.errors import AutounetError, IntegrityError, shorten_message


def test_long_lines_and_many_lines_are_shortened_with_a_count() -> None:
    text = shorten_message("x" * 1000, max_line=100)
    assert text == "x" * 100 + "... (900 more characters)"
    many = shorten_message("\n".join(f"line {i}" for i in range(10)), max_lines=3)
    assert many.splitlines() == ["line 0", "line 1", "line 2", "  ... and 7 more line(s)"]
    assert shorten_message("short") == "short"


def test_cli_prints_a_bounded_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def huge(args: object) -> int:
        raise AutounetError("plans.json: cases " + ", ".join(f"case_{i:07d}" for i in range(1_000_000)))

    parser_func = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser_func(), huge))
    assert cli.main(["plans", "Task01"]) == 2
    err = capsys.readouterr().err
    assert len(err) < 800 and err.startswith("error: plans.json: cases case_0000000") and "more characters)" in err


def test_integrity_report_of_many_problems_is_bounded() -> None:
    text = shorten_message(str(IntegrityError([f"/data/case_{i}.nii.gz: bad" for i in range(500)])))
    lines = text.splitlines()
    assert lines[0] == "500 problem(s) found in the task; nothing was written:" and len(lines) == 61
    assert lines[-1] == "  ... and 441 more line(s)"


def _with_func(parser: object, func: object) -> object:
    """The CLI parser with every subcommand's handler replaced by `func`."""
    original = parser.parse_args  # type: ignore[attr-defined]

    def parse_args(argv: object = None) -> object:
        args = original(argv)
        args.func = func
        return args

    parser.parse_args = parse_args  # type: ignore[attr-defined]
    return parser
