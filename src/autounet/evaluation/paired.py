"""Paired comparison of two models on the same cases: is B better than A, and how sure are we?

Cross-validation Dice of two runs differs by the model and by the cases; pairing each case's
score removes the second. We report the mean and spread of the per-case difference B - A, a
t-interval of its mean (the 95% interval of the paired t-test), the Wilcoxon signed-rank p-value
(no normality assumed) and how many cases each model wins.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from autounet.errors import AutounetError


@dataclass(frozen=True)
class PairedDifference:
    """B - A over the cases both have a finite score for."""

    cases: int
    mean_a: float
    mean_b: float
    mean: float
    sd: float
    ci_low: float
    ci_high: float
    median: float
    wins_b: int
    wins_a: int
    ties: int
    wilcoxon_p: float

    def describe(self) -> str:
        return (f"paired per-case difference B - A over {self.cases} cases: mean {self.mean:+.4f}, sd {self.sd:.4f}, "
                f"95% CI [{self.ci_low:+.4f}, {self.ci_high:+.4f}], median {self.median:+.4f}; B better in "
                f"{self.wins_b}, A better in {self.wins_a}, equal in {self.ties}; Wilcoxon signed-rank "
                f"p = {self.wilcoxon_p:.3g}")


def paired_difference(a: Mapping[str, float], b: Mapping[str, float], tie: float = 1e-9) -> PairedDifference:
    """Compare per-case scores of two models; cases with a NaN score in either are left out."""
    from scipy import stats

    common = sorted(c for c in set(a) & set(b) if math.isfinite(a[c]) and math.isfinite(b[c]))
    if not common:
        raise AutounetError("compare: the two runs have no validation case with a score in common; were they "
                            "trained on the same task and splits?")
    va = np.array([a[c] for c in common], dtype=np.float64)
    vb = np.array([b[c] for c in common], dtype=np.float64)
    diff = vb - va
    n = len(diff)
    sd = float(diff.std(ddof=1)) if n > 1 else float("nan")
    half = float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)) if n > 1 else float("nan")
    nonzero = diff[np.abs(diff) > tie]
    p = float(stats.wilcoxon(nonzero).pvalue) if len(nonzero) > 0 else 1.0
    return PairedDifference(
        cases=n, mean_a=float(va.mean()), mean_b=float(vb.mean()), mean=float(diff.mean()), sd=sd,
        ci_low=float(diff.mean()) - half, ci_high=float(diff.mean()) + half, median=float(np.median(diff)),
        wins_b=int((diff > tie).sum()), wins_a=int((diff < -tie).sum()), ties=int((np.abs(diff) <= tie).sum()),
        wilcoxon_p=p,
    )
