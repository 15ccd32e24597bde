"""The HTML report of the end-to-end run: well formed, every section filled, images decode.

The run comes from tests/test_end_to_end.py (built once per session, reused here).
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from autounet.core.workspace import Workspace
from autounet.reporting.html_report import SECTIONS, ReportData, case_dice_rows, render_html, write_report

pytestmark = pytest.mark.slow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DATA_URI = "data:image/png;base64,"
VOID_ELEMENTS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}



class ReportParser(HTMLParser):
    """Checks that every element is closed in order and splits the page into its h2 sections."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.section: str | None = None
        self.text: dict[str, list[str]] = {}
        self.images: dict[str, list[str]] = {}
        self.tags: dict[str, list[str]] = {}
        self.classes: dict[str, set[str]] = {}
        self.all_tags: set[str] = set()
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.all_tags.add(tag)
        if tag == "h2":
            self.section = values.get("id")
        if self.section is not None:
            self.tags.setdefault(self.section, []).append(tag)
            self.classes.setdefault(self.section, set()).update((values.get("class") or "").split())
        if tag == "img":
            src = values.get("src") or ""
            self.images.setdefault(self.section or "", []).append(src)
        for key in ("src", "href"):
            if values.get(key) and not str(values[key]).startswith(("data:", "#")):
                self.external.append(str(values[key]))
        if tag not in VOID_ELEMENTS:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID_ELEMENTS:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID_ELEMENTS:
            self.errors.append(f"end tag of void element <{tag}>")
        elif not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else 'nothing'}> at {self.getpos()}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.section is not None and data.strip():
            self.text.setdefault(self.section, []).append(data.strip())

    def section_text(self, section: str) -> str:
        return " ".join(self.text.get(section, []))


@pytest.fixture(scope="module")
def run(end_to_end_run: Any) -> Any:
    return end_to_end_run


@pytest.fixture(scope="module")
def report(run: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(Workspace(run.workspace), "Task01_Demo", tmp_path_factory.mktemp("report") / "report.html")


@pytest.fixture(scope="module")
def parsed(report: Path) -> ReportParser:
    parser = ReportParser()
    parser.feed(report.read_text(encoding="utf-8"))
    parser.close()
    return parser


def test_parser_catches_misnested_and_unclosed_tags() -> None:
    parser = ReportParser()
    parser.feed("<html><body><h2 id='a'>A</h2><table><tr><td>x</tr></table><p>open<img src='pic.png'></body>")
    assert parser.errors and "</tr> closes <td>" in parser.errors[0]
    assert parser.external == ["pic.png"]
    assert parser.section_text("a") == "A x open"


def test_report_of_a_task_without_results_says_what_to_run() -> None:
    parser = ReportParser()
    parser.feed(render_html(ReportData("Task09_Empty")))
    assert parser.errors == [] and parser.stack == []
    for section in SECTIONS:
        assert "note" in parser.classes[section], f"section {section} has no empty-state note"
    assert "autounet plan_and_preprocess" in parser.section_text("fingerprint")
    assert "autounet find_best_configuration Task09_Empty" in parser.section_text("cross-validation")


def test_case_dice_rows_average_the_foreground_labels() -> None:
    summary = {"metric_per_case": [
        {"prediction_file": "/p/case_a.nii.gz", "metrics": {"0": {"Dice": 0.99}, "1": {"Dice": 0.8},
                                                            "2": {"Dice": 0.4}}},
        {"prediction_file": "/p/case_b.nii.gz", "metrics": {"1": {"Dice": 0.6}, "2": {"Dice": float("nan")}}},
        {"prediction_file": "/p/case_c.nii.gz", "metrics": {"1": {"Dice": float("nan")}}},
    ]}
    rows = case_dice_rows(summary)
    assert [case for case, _ in rows] == ["case_a", "case_b", "case_c"]
    assert rows[0][1] == pytest.approx(0.6)
    assert rows[1][1] == pytest.approx(0.6)
    assert np.isnan(rows[2][1])


def test_report_is_well_formed_and_self_contained(report: Path, parsed: ReportParser) -> None:
    text = report.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert parsed.errors == []
    assert parsed.stack == [], f"unclosed elements: {parsed.stack}"
    assert {"html", "head", "body", "title", "style"} <= parsed.all_tags
    assert "script" not in parsed.all_tags
    assert parsed.external == [], "the page must not load anything from outside"


def test_every_section_is_present_and_filled(run: Any, parsed: ReportParser) -> None:
    assert set(SECTIONS) <= set(parsed.tags), f"missing sections: {set(SECTIONS) - set(parsed.tags)}"
    for section in SECTIONS:
        assert "note" not in parsed.classes[section], f"section {section} shows its empty-state note"

    fingerprint = parsed.section_text("fingerprint")
    assert "table" in parsed.tags["fingerprint"]
    assert "cases 10" in fingerprint
    assert "1: organ" in fingerprint and "2: lesion" in fingerprint
    assert "0: MR" in fingerprint

    plans = parsed.section_text("plans")
    assert "3d_fullres" in plans
    for decision in ("spacing", "patch_size", "batch_size", "topology", "normalization"):
        assert f"3d_fullres {decision}" in plans, f"no reason given for the {decision} decision"

    assert "3d_fullres__8ep_10it" in parsed.section_text("training")
    assert "fold_0" in parsed.section_text("training") and "fold_1" in parsed.section_text("training")
    assert len(parsed.images.get("training", [])) == 1

    cv = parsed.section_text("cross-validation")
    assert "foreground mean" in cv
    assert "worst first" in cv
    assert "Model selection" in cv and "Selected: 3d_fullres__8ep_10it" in cv
    splits = json.loads((run.workspace / "preprocessed" / "Task01_Demo" / "splits.json").read_text("utf-8"))
    validated = [case for fold in (0, 1) for case in splits[fold]["val"]]
    assert len(validated) == 4  # 10 training cases in 5 folds, folds 0 and 1 trained
    for case in validated:
        assert case in cv, f"validation case {case} missing from the per-case table"

    assert len(parsed.images.get("overlays", [])) >= 1
    assert "Dice" in parsed.section_text("overlays")


def test_embedded_images_decode(parsed: ReportParser) -> None:
    sources = [src for images in parsed.images.values() for src in images]
    assert len(sources) >= 2
    for src in sources:
        assert src.startswith(DATA_URI)
        png = base64.b64decode(src[len(DATA_URI):], validate=True)
        assert png.startswith(PNG_SIGNATURE)
        with Image.open(io.BytesIO(png)) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=float)
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert pixels.std() > 5.0, "a blank figure"


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (the screenshot check needs `chromium` or `chromium-browser`)")
    shot = tmp_path / "report.png"
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}", "--window-size=1200,2000",
         "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", report.resolve().as_uri()],
        check=False, capture_output=True, timeout=120,
    )
    assert shot.is_file(), "chromium wrote no screenshot"
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=float)
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels.std() > 10.0, "the page rendered blank"
    dark = np.count_nonzero(pixels.max(axis=2) < 100)
    assert dark > 1000, "no text or figures on the page"
