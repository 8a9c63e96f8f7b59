"""What the named studies' reports share (:mod:`kdlab.analysis.q1_report`, :mod:`kdlab.analysis.q23_report`): accuracy intervals,
paired comparisons with Holm's adjustment within a family and the verdicts they allow, and the writing and MLflow
logging of a study's report."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kdlab.analysis import stats
from kdlab.analysis.present import fmt_p, headline_gain, report_html
from kdlab.infra import io, tracking
from kdlab.infra.schema import flatten, flatten_dict
from kdlab.pipeline.params import Params


def interval(values) -> dict:
    """:func:`kdlab.analysis.stats.t_interval` of accuracies (fractions), the interval clipped to [0, 1]."""
    s = stats.t_interval(values)
    if s["ci_low"] is not None:
        s["ci_low"], s["ci_high"] = max(0.0, s["ci_low"]), min(1.0, s["ci_high"])
    return s


def holm_gain(c: dict) -> dict:
    """A comparison of a :func:`family` as the headline metrics hold it (gain, ci, its Holm p)."""
    return headline_gain(c, c.get("p_holm"))


#: the equivalence margin of every named study's comparisons (a fraction: 0.5 points), unless it declares another
MARGIN = 0.005
#: the family-wise level and the power the "detectable" effect is quoted at
ALPHA, POWER = 0.05, 0.8


def family(comparisons: dict[str, dict], margin: float = MARGIN) -> dict[str, dict]:
    """The comparisons with ``p_holm`` (Holm's adjustment over exactly this family) and what that allows, in four
    words (:func:`kdlab.analysis.stats.verdict`): ``above`` / ``below`` where the adjusted difference test rejects;
    else ``equivalent`` where the two one-sided tests against +/- ``margin`` reject (Holm-adjusted over the
    family too); else ``inconclusive``, with ``detectable``: the difference these seeds would detect with 80%
    power at Holm's first step (level 0.05 over the family's size), from the pairs' SD."""
    adjusted = stats.holm({k: c["p"] for k, c in comparisons.items()})
    sds = {k: _pair_sd(c) for k, c in comparisons.items()}
    tost_adjusted = stats.holm({k: None if sd is None else stats.tost_p(comparisons[k]["diff"], sd, comparisons[k]["n"],
                                                                         margin) for k, sd in sds.items()})
    m = max(1, sum(p is not None for p in adjusted.values()))
    return {k: {**c, "p_holm": adjusted[k], "margin": margin, "p_tost_holm": tost_adjusted[k],
                "verdict": stats.verdict(adjusted[k], c["diff"], tost_adjusted[k], ALPHA),
                "detectable": None if sds[k] is None else stats.detectable(sds[k], c["n"], ALPHA / m, POWER)}
            for k, c in comparisons.items()}


def _pair_sd(c: dict) -> float | None:
    """The SD of the paired differences, back from the 95% t interval :func:`kdlab.analysis.stats.paired` gives."""
    n = c.get("n") or 0
    if n < 2 or c.get("ci_high") is None:
        return None
    return (c["ci_high"] - c["diff"]) / float(stats.sps.t.ppf(0.975, n - 1)) * n ** 0.5


def pct(s: dict) -> str:
    """``88.10 [87.62, 88.58]``: an accuracy interval in %, clipped to [0, 100]."""
    if s.get("ci_low") is None:
        return f"{100 * s['mean']:.2f}"
    return f"{100 * s['mean']:.2f} [{100 * s['ci_low']:.2f}, {100 * s['ci_high']:.2f}]"


def gain(c: dict) -> str:
    """``+0.42 [-0.10, +0.94] (Holm p 0.240)``: a paired difference in points, with the one p-value a comparison
    shows, adjusted within its family."""
    if c.get("ci_low") is None:
        return f"{100 * c['diff']:+.2f} (one seed)"
    return (f"{100 * c['diff']:+.2f} [{100 * c['ci_low']:+.2f}, {100 * c['ci_high']:+.2f}] "
            f"(Holm p {fmt_p(c.get('p_holm'))})")


def said(c: dict) -> str:
    """The verdict a comparison of a :func:`family` allows, in its words: ``above``, ``below``, ``equivalent
    within +/-0.50`` or ``inconclusive; detectable: 1.23 points``."""
    v = c.get("verdict")
    if v is None or c.get("p_holm") is None:
        return "not testable"
    if v == "equivalent":
        return f"equivalent within +/-{100 * c['margin']:.2f}"
    if v == "inconclusive":
        d = c.get("detectable")
        return "inconclusive" + ("" if d is None else f"; detectable: {100 * d:.2f} points")
    return v


def call(a: str, b: str, c: dict) -> str:
    """What a comparison allows saying at the 5% family-wise level, no more."""
    if c.get("p_holm") is None:
        return f"{a} against {b}: not testable ({gain(c)})"
    if c["verdict"] in ("above", "below"):
        return f"{a} is **{c['verdict']}** {b} by {abs(100 * c['diff']):.2f} points ({gain(c)})"
    return f"{a} against {b}: **{said(c)}** ({gain(c)})"


def brief(question: str, comparisons, label) -> str:
    """One README bullet for a declared family: the comparisons the seeds decided (above, below, equivalent), each
    with its difference in points, and how many stayed inconclusive; ``label(c)`` names a comparison."""
    decided = [f"{label(c)} {100 * c['diff']:+.2f} **{c['verdict']}**" for c in comparisons
               if c.get("p_holm") is not None and c.get("verdict") in ("above", "below", "equivalent")]
    open_ = [c for c in comparisons if c.get("p_holm") is not None and c.get("verdict") == "inconclusive"]
    untested = len(comparisons) - len(decided) - len(open_)  # one seed, or the same difference on every seed
    if open_:
        span = sorted(100 * c["detectable"] for c in open_ if c.get("detectable") is not None)
        detect = "" if not span else (f" (detectable: {span[0]:.2f} points)" if span[0] == span[-1]
                                      else f" (detectable: {span[0]:.2f} to {span[-1]:.2f} points)")
        decided.append(f"{len(open_)} inconclusive{detect}")
    if untested:
        decided.append(f"{untested} not testable")
    return f"- **{question}** " + "; ".join(decided) + "."


def short(c: dict) -> str:
    """``+0.42 [-0.10, +0.94], Holm p 0.240``: a paired difference in points, for the README."""
    if c.get("ci_low") is None:
        return f"{100 * c['diff']:+.2f} (no interval)"
    return (f"{100 * c['diff']:+.2f} [{100 * c['ci_low']:+.2f}, {100 * c['ci_high']:+.2f}], "
            f"Holm p {fmt_p(c.get('p_holm'))}")


def errorbar(ax, x, c: dict, **kw):
    """A point with its 95% interval: an accuracy interval (``mean``) or a difference (``diff``), in %."""
    mid = c["diff"] if "diff" in c else c["mean"]
    lo = mid if c.get("ci_low") is None else c["ci_low"]
    hi = mid if c.get("ci_high") is None else c["ci_high"]
    ax.errorbar(x, 100 * mid, yerr=[[100 * (mid - lo)], [100 * (hi - mid)]], fmt="o", capsize=3, **kw)


def plain(x):
    """JSON-ready: numpy scalars as Python numbers, int keys as strings."""
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def publish(p: Params, study: dict, key: str, title: str, report_dir: Path, drawn: dict, text: str, found: str,
            found_brief: str, analysis: dict, numbers: dict, metrics_dir: Path) -> None:
    """A named study's report written and logged: ``report_dir``'s report.md, findings.md (its docs page's block),
    brief.md (the README's block: ``found_brief``) and pictures (``drawn``:
    name -> draw(path)), ``metrics_dir``'s analysis.json and headline.json, and the MLflow run ``<key>-report``
    (with report.html) under the study's parent; ``study``: the study's flattened params, as its training runs
    log them, so that the report joins the same MLflow study."""
    report_dir.mkdir(parents=True, exist_ok=True)
    for name, draw in drawn.items():
        tmp = report_dir / f".{name}.tmp.png"
        draw(tmp)
        tmp.replace(report_dir / name)
    report_md, headline_json = report_dir / "report.md", metrics_dir / "headline.json"
    io.save_text(text, report_md)
    io.save_text(found, report_dir / "findings.md")
    io.save_text(found_brief, report_dir / "brief.md")
    io.save_json(plain(analysis), metrics_dir / "analysis.json")
    io.save_json(numbers, headline_json)
    page = report_html(text, {n: (report_dir / n).read_bytes() for n in drawn}, f"kdlab {title}")
    with tracking.run("report", f"{key}-report", {**flatten(p), **study},
                      description=f"{title[0].upper()}{title[1:]}: report.html (with its pictures) and the headline "
                                  f"numbers.") as run:
        flat = flatten_dict(numbers)
        run.log(flat)
        run.log_to_study(flat)
        run.log_text(page, "report.html")
        run.log_artifact(report_md)
        run.log_study_text(page, "report.html")
    print(f"wrote {report_md}, {len(drawn)} pictures, {headline_json}")
