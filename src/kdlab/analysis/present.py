"""How numbers are shown: percentages, intervals, differences, p-values, the sentence a comparison earns,
and the plot helpers every picture uses. A leaf: it imports nothing from kdlab (and matplotlib only when a
picture is drawn)."""
from __future__ import annotations

from pathlib import Path

#: how a method is called in tables, pictures and sentences
LABELS = {"raw": "Trained alone (raw)", "kd": "Distilled (kd)", "kd_correct_only": "Distilled, teacher-correct only"}
COLORS = {"teacher": "black", "raw": "tab:gray", "kd": "tab:blue", "kd_correct_only": "tab:orange"}


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
    """``mean [lo, hi]`` of a :func:`kdlab.analysis.stats.t_interval` (the mean alone where there is no interval: one
    seed, or ``dvc exp show``, which drops nulls)."""
    if not s:
        return "-"
    if s.get("ci_low") is None:
        return num(s["mean"], scale, digits)
    return f"{num(s['mean'], scale, digits)} [{num(s['ci_low'], scale, digits)}, {num(s['ci_high'], scale, digits)}]"


def diff(w: dict) -> str:
    """``+d [lo, hi]`` points of a :func:`kdlab.analysis.stats.welch` or :func:`kdlab.analysis.stats.paired`
    comparison."""
    out = pts(w["diff"])
    if w.get("ci_low") is not None:
        out += f" [{pts(w['ci_low'])}, {pts(w['ci_high'])}]"
    return out


def test_name(comparisons: dict) -> str:
    """How a question's comparisons were tested: ``paired t; Holm`` (each carries ``p_holm``: see
    :func:`kdlab.analysis.report.paired_families`) or ``Welch``."""
    return "paired t; Holm" if any("p_holm" in c["test_acc"] for c in comparisons.values()) else "Welch"


def verdict(name_a: str, name_b: str, cmp_: dict, n_seeds: int) -> str:
    """One sentence on a - b in test accuracy that says no more than the interval does: for a paired comparison
    with a family-adjusted p (``p_holm``), no more than that p does at the 5% family-wise level."""
    w = cmp_["test_acc"]
    if "p_holm" in w:
        return _paired_verdict(name_a, name_b, w, n_seeds)
    if w["ci_low"] is None:
        return (f"{name_a} vs {name_b}: {pts(w['diff'])} points with one seed per method; no interval over "
                f"seeds is possible, so only the paired test below speaks to it.")
    interval = (f"95% CI [{pts(w['ci_low'])}, {pts(w['ci_high'])}] points, Welch p = {fmt_p(w['p'])}, {n_seeds} "
                f"seeds each")
    if w["ci_low"] > 0:
        return f"**{name_a} beat {name_b}** by {pts(w['diff'])} points ({interval})."
    if w["ci_high"] < 0:
        return f"**{name_a} was worse than {name_b}** by {pts(-w['diff'])} points ({interval})."
    return (f"**No detectable difference** between {name_a} and {name_b}: {pts(w['diff'])} points, but the "
            f"interval includes zero ({interval}). More seeds would be needed to separate them, if they differ at all.")


def _paired_verdict(name_a: str, name_b: str, w: dict, n_seeds: int) -> str:
    if w.get("ci_low") is None or w.get("p_holm") is None:
        return f"{name_a} vs {name_b}: {pts(w['diff'])} points; no paired test is possible with one seed (or no variation)."
    interval = (f"paired over {n_seeds} seeds: 95% CI [{pts(w['ci_low'])}, {pts(w['ci_high'])}] points, "
                f"Holm-adjusted p = {fmt_p(w['p_holm'])}")
    if w["p_holm"] < 0.05:
        better = w["diff"] > 0
        return (f"**{name_a} {'beat' if better else 'was worse than'} {name_b}** by {pts(abs(w['diff']))} points "
                f"({interval}).")
    return (f"**No difference detectable** at the 5% family-wise level between {name_a} and {name_b}: "
            f"{pts(w['diff'])} points ({interval}).")


def table(df) -> str:
    """A DataFrame of display strings as a markdown table: the columns as its header, a line per row."""
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in df.itertuples(index=False)])


def headline_acc(s: dict, key: str = "acc") -> dict:
    """A :func:`kdlab.analysis.stats.t_interval` of a fraction as the headline metrics show it: the mean in % and the
    95% interval's half-width in points (t intervals are symmetric), rounded to what a terminal needs."""
    out = {key: round(100 * s["mean"], 2)}
    if s.get("ci_high") is not None:
        out[f"{key}_ci"] = round(100 * (s["ci_high"] - s["mean"]), 2)
    return out


def headline_gain(w: dict, p_adj: float | None) -> dict:
    """A :func:`kdlab.analysis.stats.welch` difference in points, its 95% half-width and its family-adjusted p."""
    out = {"gain": round(100 * w["diff"], 2)}
    if w.get("ci_high") is not None:
        out["ci"] = round(100 * (w["ci_high"] - w["diff"]), 2)
    if p_adj is not None:
        out["p_holm"] = round(p_adj, 4)
    return out


# ---------------------------------------------------------------- the report as one HTML page

def _inline(text: str) -> str:
    import html
    import re

    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def report_html(markdown: str, images: dict[str, bytes], title: str) -> str:
    """The report's markdown (headings, paragraphs, lists, tables, pictures) as one self-contained HTML page,
    the pictures inlined as base64 PNGs: what MLflow's artifact viewer shows with its pictures."""
    import base64
    import html
    import re

    body, table, items = [], [], []

    def flush():
        if table:
            rows = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", r.strip().strip("|"))]
                    for r in table if not re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", r.strip())]
            head = "".join(f"<th>{_inline(c)}</th>" for c in rows[0])
            cells = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
            table.clear()
        if items:
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in markdown.splitlines():
        image = re.fullmatch(r"!\[([^\]]*)\]\(([^)]+)\)", line.strip())
        if line.startswith("|"):
            table.append(line)
            continue
        if line.startswith("- "):
            items.append(line[2:])
            continue
        flush()
        if m := re.match(r"(#{1,4}) (.*)", line):
            body.append(f"<h{len(m.group(1))}>{_inline(m.group(2))}</h{len(m.group(1))}>")
        elif image and image.group(2) in images:
            data = base64.b64encode(images[image.group(2)]).decode()
            body.append(f'<p><img alt="{html.escape(image.group(1))}" src="data:image/png;base64,{data}"></p>')
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    flush()
    style = ("body{font-family:sans-serif;max-width:1100px;margin:1em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}"
             "th{background:#f3f3f3}"
             "img{max-width:100%}code{background:#f3f3f3;padding:0 2px}")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title><style>{style}"
            f"</style></head><body>{''.join(body)}</body></html>\n")


# ---------------------------------------------------------------- pictures

def plt():
    """matplotlib's pyplot, drawing to files only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def color(method: str, i: int) -> str:
    return COLORS.get(method, f"C{i + 2}")


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
