"""Goodness-of-fit checks shared by the statistical sampling tests.

Every statistical test compares an empirical histogram of sampled outcomes with the exact
distribution, computed by enumeration from the same logits, using Pearson's chi-square test.
Cells whose expected count is below 5 are pooled into one cell (the usual validity rule for the
chi-square approximation). A test passes when the p-value is at least ``ALPHA``.

Why ``ALPHA = 1e-4``: under the null hypothesis (the sampler is exact) a fixed-seed test fails
with probability 1e-4, so a dozen such tests give a ~0.1 % chance that some seed choice is
unlucky, and since seeds are fixed the outcome is deterministic anyway. The deliberately broken
samplers in the tests produce p-values below 1e-12 at the same sample sizes, so the threshold
keeps full power against the bugs that matter (accepting without the rejection step, missing
renormalisation, a wrong residual).
"""

from __future__ import annotations

import torch

ALPHA = 1e-4
MIN_EXPECTED = 5.0


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, float, int]:
    """(p-value, total-variation distance, degrees of freedom) of ``counts`` against ``probs``."""
    observed = counts.double().flatten()
    exact = probs.double().flatten()
    exact = exact / exact.sum()
    n = float(observed.sum())
    tv = float(0.5 * (observed / n - exact).abs().sum())
    expected = exact * n
    if float(observed[exact == 0].sum()) > 0:  # an outcome the exact distribution rules out
        return 0.0, tv, 0
    big = expected >= MIN_EXPECTED
    stat = float((((observed[big] - expected[big]) ** 2) / expected[big]).sum())
    cells = int(big.sum())
    small_expected = float(expected[~big].sum())
    if small_expected > 0:
        stat += (float(observed[~big].sum()) - small_expected) ** 2 / small_expected
        cells += 1
    df = max(cells - 1, 1)
    p_value = float(
        torch.special.gammaincc(
            torch.tensor(df / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64)
        )
    )
    return p_value, tv, df


def assert_matches(counts: torch.Tensor, probs: torch.Tensor, what: str) -> None:
    """Fail unless ``counts`` are a plausible sample of ``probs`` (chi-square p >= ALPHA)."""
    p_value, tv, df = chi_square(counts, probs)
    n = int(counts.sum())
    assert p_value >= ALPHA, (
        f"{what}: {n} samples do not follow the exact distribution "
        f"(chi-square p={p_value:.3g} < {ALPHA}, df={df}, total variation {tv:.4f})"
    )
