"""The recipe pilot's table and power analysis (:mod:`kdlab.pipeline.pilot` trains its runs): per recipe and arm,
the final validation accuracy over seeds, its seed SD and how smooth the curves are; the paired SD of each arm
against ``raw``; the recipe adopted by the declared rule; and, from the adopted recipe's SDs, the seeds a paired
comparison needs for the study's smallest effect of interest at each Holm step, and the effect each seed count
detects. Validation only: the pilot's runs are never tested.

The rule (``<study>.pilot``): a recipe qualifies when every arm's seed SD of the final validation accuracy is at
most ``max_sd`` points and no run (teacher or student) drops more than ``max_drop`` points from one epoch to the
next in the second half of its training; among those that qualify, the one with the highest mean final
validation accuracy over its arms is adopted. When none qualifies, none is adopted and the table says so.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from kdlab.analysis.stats import detectable, seeds_for
from kdlab.infra import io
from kdlab.pipeline.pilot import run_dir
from kdlab.pipeline.study import Pilot

#: the power analysis: 80% power, two-sided level 0.05 divided by the family's size (Holm's first step), for
#: these family sizes and seed counts, and for the pilot's declared effect and 1 point
POWER, ALPHA = 0.8, 0.05
FAMILIES, SEED_COUNTS = [1, 2, 4, 8], [3, 5, 8, 10, 15]


def second_half_drops(curve: list[float]) -> list[float]:
    """Epoch-to-epoch falls of a validation curve (points, positive = a drop) over the second half of training."""
    half = len(curve) // 2
    return [100 * (curve[e - 1] - curve[e]) for e in range(max(1, half), len(curve))]


def _sd(values: list[float]) -> float | None:
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def summarize(pilot: Pilot, metrics: Path) -> dict:
    """Every recipe's figures (points), from the runs' curve files."""
    recipes = {}
    for name, r in pilot.recipes.items():
        out = run_dir(metrics, name)
        teacher = json.loads((out / "teacher.curve.json").read_text())
        finals, drops, arms = {}, [max(second_half_drops(teacher["val_curve"]), default=0.0)], {}
        for arm in pilot.arms:
            runs = [json.loads((out / f"{arm}-s{seed}.curve.json").read_text()) for seed in pilot.seeds]
            finals[arm] = [100 * c["val_curve"][-1] for c in runs]
            arm_drops = [max(second_half_drops(c["val_curve"]), default=0.0) for c in runs]
            drops += arm_drops
            arms[arm] = {"mean": float(np.mean(finals[arm])), "sd": _sd(finals[arm]), "max_drop": max(arm_drops),
                         "n": len(runs)}
        for arm in pilot.arms:
            if arm != "raw" and "raw" in finals:
                arms[arm]["paired_sd_vs_raw"] = _sd(list(np.subtract(finals[arm], finals["raw"])))
        sds = [a["sd"] for a in arms.values()]
        qualifies = all(s is not None and s <= pilot.max_sd for s in sds) and max(drops) <= pilot.max_drop
        recipes[name] = {"recipe": teacher["recipe"], "epochs": teacher["epochs"], "steps": teacher["steps"],
                         "teacher_val": 100 * teacher["val_curve"][-1], "arms": arms, "max_drop": max(drops),
                         "max_sd": max((s for s in sds if s is not None), default=None),
                         "mean": float(np.mean([a["mean"] for a in arms.values()])), "qualifies": qualifies}
    ok = [n for n, s in recipes.items() if s["qualifies"]]
    adopted = max(ok, key=lambda n: recipes[n]["mean"]) if ok else None
    return {"recipes": recipes, "adopted": adopted, "rule": {"max_sd": pilot.max_sd, "max_drop": pilot.max_drop},
            "seeds": list(pilot.seeds)}


def power_table(sd: float, effects: list[float], families: list[int], seeds: list[int]) -> dict:
    """Seeds a paired comparison needs for each effect at each Holm step (level 0.05 / family size), and the effect
    each seed count detects at level 0.05 (points)."""
    need = {f"{e:g}": {str(m): seeds_for(sd, e, ALPHA / m, POWER) for m in families} for e in effects}
    can = {str(n): {str(m): detectable(sd, n, ALPHA / m, POWER) for m in families} for n in seeds}
    return {"sd": sd, "power": POWER, "alpha": ALPHA, "seeds_needed": need, "detectable": can}


def _f(x, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def markdown(s: dict, power: dict | None, study: str, images: int) -> str:
    arms = list(next(iter(s["recipes"].values()))["arms"]) if s["recipes"] else []
    head = ["recipe", "lr", "schedule (warm-up)", "batch", "EMA", "views", "epochs (steps)", "teacher val",
            *[f"{a} val (SD)" for a in arms], *[f"{a} - raw paired SD" for a in arms if a != "raw"],
            "max drop, 2nd half", "qualifies"]
    lines = [f"# The {study} recipe pilot: seed SD and smoothness per recipe (validation only)", "",
             f"Each recipe trains the study's teacher, caches its logits, and trains the student with each arm over "
             f"seeds {', '.join(map(str, s['seeds']))} on the study's {images} training images; figures are final "
             f"validation accuracy in points. Rule (declared before the runs): every arm's seed SD at most "
             f"{s['rule']['max_sd']:g} points and no epoch-to-epoch validation drop above {s['rule']['max_drop']:g} "
             f"points in the second half of any run; the qualifying recipe with the highest mean is adopted.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in s["recipes"].items():
        rc = r["recipe"]
        cells = [f"`{name}`", f"{rc['lr']:g}", f"{rc['schedule']} ({rc['warmup']:g})", str(rc["batch_size"]),
                 f"{rc['ema']:g}" if rc["ema"] else "no", str(rc["views"]), f"{r['epochs']} ({r['steps']})",
                 _f(r["teacher_val"]), *[f"{_f(r['arms'][a]['mean'])} ({_f(r['arms'][a]['sd'])})" for a in arms],
                 *[_f(r["arms"][a].get("paired_sd_vs_raw")) for a in arms if a != "raw"], _f(r["max_drop"], 1),
                 "yes" if r["qualifies"] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"**Adopted: `{s['adopted']}`.**" if s["adopted"] else
              "**No recipe qualifies**: none is adopted; the study must not run on these recipes as they are."]
    if power:
        fams = list(next(iter(power["seeds_needed"].values())))
        lines += ["", f"## Power (paired t, {power['power']:.0%} power, two-sided level {power['alpha']:g} / family "
                      f"size at Holm's first step), from a paired SD of {power['sd']:.2f} points", "",
                  "| effect (points) | " + " | ".join(f"family of {m}" for m in fams) + " |",
                  "|---|" + "---|" * len(fams)]
        for e, row in power["seeds_needed"].items():
            lines.append(f"| {e} | " + " | ".join(f"{v} seeds" if v else "> 500 seeds" for v in row.values()) + " |")
        lines += ["", "| seeds | " + " | ".join(f"detectable, family of {m}" for m in fams) + " |",
                  "|---|" + "---|" * len(fams)]
        for n, row in power["detectable"].items():
            lines.append(f"| {n} | " + " | ".join(f"{_f(v)} points" for v in row.values()) + " |")
    return "\n".join(lines) + "\n"


def run_pilot_report(pilot: Pilot, metrics: Path, out_json: Path, out_md: Path, study: str, images: int) -> dict:
    """The pilot's table (``out_md``) and figures (``out_json``); power from the adopted recipe's largest paired
    SD against raw (or, with no paired arm, its largest arm SD)."""
    s = summarize(pilot, metrics)
    power = None
    if s["adopted"]:
        arms = s["recipes"][s["adopted"]]["arms"].values()
        sds = [a["paired_sd_vs_raw"] for a in arms if a.get("paired_sd_vs_raw") is not None] or \
              [a["sd"] for a in arms if a["sd"] is not None]
        if sds:
            power = power_table(max(sds), sorted({pilot.effect, 1.0}), FAMILIES, SEED_COUNTS)
    io.save_json({**s, "power": power}, out_json)
    io.save_text(markdown(s, power, study, images), out_md)
    print(f"{study} pilot: adopted {s['adopted'] or 'none'}; {out_md}")
    return s
