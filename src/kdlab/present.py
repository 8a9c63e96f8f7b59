"""How numbers are shown: percentages, intervals, differences, p-values, the sentence a comparison earns,
and the plot helpers every picture uses. A leaf: it imports nothing from kdlab (and matplotlib only when a
picture is drawn)."""
from __future__ import annotations

from pathlib import Path

#: how a variant is called in tables, pictures and sentences
LABELS = {"raw": "Trained alone (raw)", "kd": "Distilled (kd)", "kd_correct_only": "Distilled, teacher-correct only"}
COLORS = {"teacher": "black", "raw": "tab:gray", "kd": "tab:blue", "kd_correct_only": "tab:orange",
          "init_teacher": "tab:red", "init_random": "tab:pink"}


# ---------------------------------------------------------------- numbers

def fmt_p(p: float | None) -> str:
    return "n/a" if p is None else "< 0.001" if p < 0.001 else f"{p:.3f}"


def num(x: float | None, scale: float = 100, digits: int = 2) -> str:
    """``x`` x ``scale`` (a fraction as a percentage by default)."""
    return "n/a" if x is None else f"{scale * x:.{digits}f}"


def pts(x: float) -> str:
    """A difference of two fractions, in signed percentage points."""
    return f"{100 * x:+.2f}"


def ci(s: dict | None, scale: float = 100, digits: int = 2) -> str:
    """``mean [lo, hi]`` of a :func:`kdlab.stats.t_interval` (the mean alone where there is no interval: one
    seed, or ``dvc exp show``, which drops nulls)."""
    if not s:
        return "-"
    if s.get("ci_low") is None:
        return num(s["mean"], scale, digits)
    return f"{num(s['mean'], scale, digits)} [{num(s['ci_low'], scale, digits)}, {num(s['ci_high'], scale, digits)}]"


def diff(w: dict, with_p: bool = False) -> str:
    """``+d [lo, hi]`` points of a :func:`kdlab.stats.welch` comparison, with its p-value when ``with_p``."""
    out = pts(w["diff"])
    if w.get("ci_low") is not None:
        out += f" [{pts(w['ci_low'])}, {pts(w['ci_high'])}]" + (f" (p {fmt_p(w['p'])})" if with_p else "")
    return out


def verdict(name_a: str, name_b: str, cmp_: dict, n_seeds: int) -> str:
    """One sentence on a - b in test accuracy that says no more than the interval does."""
    w = cmp_["test_acc"]
    if w["ci_low"] is None:
        return (f"{name_a} vs {name_b}: {pts(w['diff'])} points with one seed per variant; no interval over "
                f"seeds is possible, so only the paired test below speaks to it.")
    interval = (f"95% CI [{pts(w['ci_low'])}, {pts(w['ci_high'])}] points, Welch p = {fmt_p(w['p'])}, {n_seeds} "
                f"seeds each")
    if w["ci_low"] > 0:
        return f"**{name_a} beat {name_b}** by {pts(w['diff'])} points ({interval})."
    if w["ci_high"] < 0:
        return f"**{name_a} was worse than {name_b}** by {pts(-w['diff'])} points ({interval})."
    return (f"**No detectable difference** between {name_a} and {name_b}: {pts(w['diff'])} points, but the "
            f"interval includes zero ({interval}). More seeds would be needed to separate them, if they differ at all.")


# ---------------------------------------------------------------- pictures

def plt():
    """matplotlib's pyplot, drawing to files only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def color(variant: str, i: int) -> str:
    return COLORS.get(variant, f"C{i + 2}")


def bounds(s: dict) -> tuple[float, float]:
    """The interval's ends, or the mean for both where there is none."""
    lo, hi = s.get("ci_low"), s.get("ci_high")
    return (s["mean"] if lo is None else lo), (s["mean"] if hi is None else hi)


def yerr(stats: list[dict]) -> list[list[float]]:
    """matplotlib's ``yerr`` (below, above) in percentage points for the intervals ``stats``."""
    ends = [bounds(s) for s in stats]
    return [[100 * (s["mean"] - lo) for s, (lo, _) in zip(stats, ends)],
            [100 * (hi - s["mean"]) for s, (_, hi) in zip(stats, ends)]]


def finish(fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt().close(fig)
