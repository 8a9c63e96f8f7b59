"""How sure is each claim: intervals over seeds, paired t-tests over seeds where two arms share their seeds
(Welch's test where they do not), paired tests on the test images for single-seed comparisons, and Holm's
adjustment for a family of them. Values that need more
samples than given are None."""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
from scipy import stats as sps


def _clean(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def t_interval(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean, sample std and the t-distribution confidence interval of the mean."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    mean = float(x.mean())
    if n < 2:
        return {"mean": mean, "std": None, "ci_low": None, "ci_high": None, "n": n}
    std = float(x.std(ddof=1))
    half = sps.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half, "n": n}


def welch(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """mean(a) - mean(b) with its Welch-Satterthwaite interval and the two-sided Welch t-test p-value."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return {"diff": diff, "ci_low": None, "ci_high": None, "p": None, "df": None}
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return {"diff": diff, "ci_low": diff, "ci_high": diff, "p": None if diff == 0 else 0.0, "df": None}
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = sps.t.ppf(0.5 + confidence / 2, df) * se
    p = 2 * sps.t.sf(abs(diff) / se, df)
    return {"diff": diff, "ci_low": diff - half, "ci_high": diff + half, "p": _clean(p), "df": _clean(df)}


def paired(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """mean(a - b) over pairs (the same seed in both arms) with its t interval on n - 1 degrees of freedom and
    the two-sided paired t-test p-value."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n, diff = len(d), float(d.mean())
    if n < 2:
        return {"diff": diff, "ci_low": None, "ci_high": None, "p": None, "n": n}
    sd = float(d.std(ddof=1))
    if sd == 0:
        return {"diff": diff, "ci_low": diff, "ci_high": diff, "p": None if diff == 0 else 0.0, "n": n}
    se = sd / math.sqrt(n)
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * se
    p = _clean(2 * sps.t.sf(abs(diff) / se, n - 1))
    return {"diff": diff, "ci_low": diff - half, "ci_high": diff + half, "p": p, "n": n}


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict:
    """Exact McNemar test on paired per-image correctness: b = only a right, c = only b right."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    p = 1.0 if n == 0 else min(1.0, float(2 * sps.binom.cdf(min(only_a, only_b), n, 0.5)))
    return {"only_a": only_a, "only_b": only_b, "p": p}


def paired_bootstrap(correct_a: Sequence[bool], correct_b: Sequence[bool], resamples: int = 10000,
                     seed: int = 0, confidence: float = 0.95) -> dict:
    """Accuracy difference a - b with a percentile interval from resampling test images (pairs kept)."""
    a, b = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
    d = a - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(resamples, len(d)))
    boots = d[idx].mean(axis=1)
    lo, hi = np.quantile(boots, [0.5 - confidence / 2, 0.5 + confidence / 2])
    # two-sided: how often the resampled difference lands on the other side of zero
    p = min(1.0, 2 * min((boots <= 0).mean(), (boots >= 0).mean()))
    return {"diff": float(d.mean()), "ci_low": float(lo), "ci_high": float(hi), "p": float(p)}


def holm(pvalues: dict[str, float | None]) -> dict[str, float | None]:
    """Holm's step-down adjustment of a family of p-values (family-wise error rate); None stays None and is not
    counted in the family."""
    tested = sorted((p, k) for k, p in pvalues.items() if p is not None)
    m, out, running = len(tested), {k: None for k in pvalues}, 0.0
    for i, (p, k) in enumerate(tested):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


# ---------------------------------------------------------------- over a tidy table of runs (kdlab.analysis.results)

def intervals(df, by: str, value: str, confidence: float = 0.95) -> dict[str, dict]:
    """:func:`t_interval` of column ``value`` for each ``by`` group of a tidy DataFrame (one row per run), in
    the order the groups first appear."""
    return {g: t_interval(x.to_numpy(float), confidence) for g, x in df.groupby(by, sort=False)[value]}


def welch_pairs(df, by: str, value: str, pairs, confidence: float = 0.95) -> dict[str, dict]:
    """``{"a_vs_b": welch(a's values, b's values)}`` for each (a, b) of ``pairs``, groups being ``by``'s."""
    groups = {g: x.to_numpy(float) for g, x in df.groupby(by, sort=False)[value]}
    return {f"{a}_vs_{b}": welch(groups[a], groups[b], confidence) for a, b in pairs}


def paired_pairs(df, by: str, value: str, pairs, pair_on: str = "seed", confidence: float = 0.95) -> dict[str, dict]:
    """``{"a_vs_b": paired(a's values, b's values)}`` for each (a, b) of ``pairs``, matched on ``pair_on`` (the
    seeds both groups have; an unmatched run is left out)."""
    wide = df.pivot_table(index=pair_on, columns=by, values=value, aggfunc="first")
    out = {}
    for a, b in pairs:
        both = wide[[a, b]].dropna()
        out[f"{a}_vs_{b}"] = paired(both[a].to_numpy(float), both[b].to_numpy(float), confidence)
    return out


def paired_power(sd: float, n: int, effect: float, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test over ``n`` pairs at level ``alpha`` to detect a mean difference
    ``effect`` when the differences have standard deviation ``sd`` (noncentral t)."""
    if n < 2:
        return 0.0
    if sd <= 0:
        return 1.0
    df, nc = n - 1, effect / (sd / math.sqrt(n))
    crit = sps.t.ppf(1 - alpha / 2, df)
    upper, lower = sps.nct.sf(crit, df, nc), sps.nct.cdf(-crit, df, nc)
    if not math.isfinite(upper):
        upper = _nct_tail(crit, df, nc, upper=True)
    if not math.isfinite(lower):
        lower = _nct_tail(crit, df, nc, upper=False)
    return float(min(1.0, upper + lower))


def _nct_tail(crit: float, df: int, nc: float, upper: bool) -> float:
    """P(T > crit) (``upper``) or P(T < -crit) for T noncentral t, by integrating the normal tail over the
    chi-square of the denominator: scipy's ``nct`` returns nan in the far tail at a large noncentrality (1 point
    at paired SD 0.27 and 5 seeds is nc 8.4), where this stays a number."""
    from scipy import integrate

    def normal_tail(v: float) -> float:
        s = crit * math.sqrt(v / df)
        return sps.norm.sf(s - nc) if upper else sps.norm.cdf(-s - nc)

    lo, hi = sps.chi2.ppf(1e-15, df), sps.chi2.isf(1e-15, df)
    with warnings.catch_warnings():  # quad's "roundoff error is detected" at relative tolerance 1e-10: the
        # power is read to 2 decimals, so the warning says nothing a reader needs and cuts into the stage's output
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        value, _ = integrate.quad(lambda v: sps.chi2.pdf(v, df) * normal_tail(v), lo, hi, points=[df],
                                  epsabs=0.0, epsrel=1e-10, limit=200)
    return float(value)


def seeds_for(sd: float, effect: float, alpha: float = 0.05, power: float = 0.8, most: int = 500) -> int | None:
    """The fewest pairs (seeds) with which the paired t-test reaches ``power`` for ``effect``; None past ``most``."""
    for n in range(2, most + 1):
        if paired_power(sd, n, effect, alpha) >= power:
            return n
    return None


def detectable(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The smallest mean difference the paired t-test over ``n`` pairs detects with ``power`` (bisection)."""
    if n < 2:
        return None
    lo, hi = 0.0, max(sd, 1e-12)
    while paired_power(sd, n, hi, alpha) < power:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if paired_power(sd, n, mid, alpha) < power else (lo, mid)
    return hi


def tost(a: Sequence[float], b: Sequence[float], margin: float) -> dict:
    """Paired two one-sided tests of equivalence: H0 |mean(a - b)| >= ``margin`` against H1 within it. ``p`` is
    the larger one-sided p-value (equivalence at level alpha when p < alpha, that is when the 1 - 2 alpha
    interval lies inside +/- margin)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n, diff = len(d), float(d.mean()) if len(d) else float("nan")
    p = tost_p(diff, float(d.std(ddof=1)), n, margin) if n >= 2 else None
    return {"diff": diff, "margin": margin, "p": p, "n": n}


def tost_p(diff: float, sd: float, n: int, margin: float) -> float | None:
    """:func:`tost`'s p from the mean ``diff`` and the SD ``sd`` of ``n`` paired differences."""
    if n < 2:
        return None
    if sd == 0:
        return 0.0 if abs(diff) < margin else 1.0
    se = sd / math.sqrt(n)
    lower = sps.t.sf((diff + margin) / se, n - 1)   # H0: diff <= -margin
    upper = sps.t.cdf((diff - margin) / se, n - 1)  # H0: diff >= +margin
    return _clean(max(lower, upper))


def verdict(p_adjusted: float | None, diff: float, tost_p_adjusted: float | None, alpha: float = 0.05) -> str:
    """The four words: ``above`` / ``below`` (the difference test rejects, Holm-adjusted), ``equivalent`` (it
    does not, and the equivalence test within the declared margin rejects, Holm-adjusted), else ``inconclusive``."""
    if p_adjusted is not None and p_adjusted < alpha:
        return "above" if diff > 0 else "below"
    if tost_p_adjusted is not None and tost_p_adjusted < alpha:
        return "equivalent"
    return "inconclusive"
