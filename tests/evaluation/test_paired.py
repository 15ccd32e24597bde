"""Paired per-case comparison of two runs, checked against hand-computed figures."""

from __future__ import annotations

import math

import pytest

from autounet.errors import AutounetError
from autounet.evaluation.paired import paired_difference


def test_paired_difference_by_hand() -> None:
    a = {"c1": 0.50, "c2": 0.60, "c3": 0.70, "c4": 0.80, "only_a": 0.1}
    b = {"c1": 0.55, "c2": 0.70, "c3": 0.70, "c4": 0.75, "only_b": 0.9, "nan": float("nan")}
    result = paired_difference(a, b)
    # differences 0.05, 0.10, 0.00, -0.05: mean 0.025, sd sqrt(0.0125/3) = 0.0645497
    assert result.cases == 4 and result.mean == pytest.approx(0.025)
    assert result.sd == pytest.approx(math.sqrt(0.0125 / 3))
    half = 3.182446305284263 * math.sqrt(0.0125 / 3) / 2  # t(0.975, 3) x sd / sqrt(4)
    assert (result.ci_low, result.ci_high) == (pytest.approx(0.025 - half), pytest.approx(0.025 + half))
    assert result.median == pytest.approx(0.025)
    assert (result.wins_b, result.wins_a, result.ties) == (2, 1, 1)
    assert (result.mean_a, result.mean_b) == (pytest.approx(0.65), pytest.approx(0.675))
    # Wilcoxon on the 3 non-zero differences 0.05, 0.10, -0.05: ranks 1.5, 3, 1.5; W- = 1.5 -> p = 0.75 (exact)
    assert result.wilcoxon_p == pytest.approx(0.75)
    assert "over 4 cases: mean +0.0250" in result.describe()


def test_identical_runs_and_disjoint_runs() -> None:
    same = paired_difference({"a": 0.5, "b": 0.6}, {"a": 0.5, "b": 0.6})
    assert same.mean == 0 and same.ties == 2 and same.wilcoxon_p == 1.0
    with pytest.raises(AutounetError, match="no validation case with a score in common"):
        paired_difference({"a": 0.5}, {"b": 0.5})
