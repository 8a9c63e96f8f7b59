"""``kdlab sweep --param loss.alpha``: gather DVC experiments into one table and plot.

Run the sweep first, e.g. ``dvc exp run --queue -S 'loss.alpha=0.1,0.3,0.5,0.7,0.9' && dvc queue start``.
This reads ``dvc exp show --json`` (every experiment's params.yaml and metrics/summary.json), groups the
experiments by the swept param and writes reports/sweep_<param>.md and .png: each variant's test accuracy
(mean and 95% interval over seeds) against the param's value.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from kdlab import io
from kdlab.evaluate import LABELS, SUMMARY_JSON
from kdlab.report import REPORTS, _color, _plt, finish


def _get(tree: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def experiments(exp_show: list) -> list[dict]:
    """Flatten ``dvc exp show --json`` into [{"name", "rev", "params", "summary"}]. Records with the same
    params and metrics (the workspace after ``dvc exp run`` and that experiment) appear once, under the
    name that comes last (the experiment's)."""
    found: dict[str, dict] = {}

    def walk(node):
        if isinstance(node, list):
            for x in node:
                walk(x)
        elif isinstance(node, dict):
            data = node.get("data")
            if isinstance(data, dict) and "params" in data:
                rev = data.get("rev") or node.get("rev")
                params = _get(data, "params") or {}
                params = (params.get("params.yaml") or {}).get("data")
                summary = ((data.get("metrics") or {}).get(SUMMARY_JSON) or {}).get("data")
                if params and summary:
                    key = json.dumps([params, summary], sort_keys=True)
                    found[key] = {"name": node.get("name") or data.get("name") or rev, "rev": rev,
                                  "params": params, "summary": summary}
            for k in ("experiments", "revs"):
                if k in node:
                    walk(node[k])

    walk(exp_show)
    return list(found.values())


def table(exps: list[dict], param: str) -> tuple[list[str], list[tuple]]:
    """(variants, rows) with rows = (param value, experiment name, {variant: test_acc stats})."""
    rows = []
    for e in exps:
        value = _get(e["params"], param)
        if value is None:
            continue
        rows.append((value, e["name"], {v: s["test_acc"] for v, s in e["summary"]["variants"].items()}))
    rows.sort(key=lambda r: (r[0], r[1]))
    names = sorted({v for r in rows for v in r[2]}, key=lambda v: (v != "raw", v))
    return names, rows


def _bound(s: dict, key: str) -> float:
    """An interval end, or the mean where there is none (one seed; dvc exp show drops nulls)."""
    value = s.get(key)
    return s["mean"] if value is None else value


def _cell(s: dict | None) -> str:
    if not s:
        return "-"
    if s.get("ci_low") is None:  # dvc exp show drops nulls, so the key may be missing
        return f"{100 * s['mean']:.2f}"
    return f"{100 * s['mean']:.2f} [{100 * s['ci_low']:.2f}, {100 * s['ci_high']:.2f}]"


def markdown(param: str, names: list[str], rows: list[tuple]) -> str:
    head = f"| {param} | experiment | " + " | ".join(LABELS.get(v, v) for v in names) + " |"
    lines = [f"Test accuracy (%) against `{param}`: mean [95% CI] over seeds, one row per DVC experiment "
             f"(from `dvc exp show`; regenerate with `kdlab sweep --param {param}`).", "", head,
             "|" + "---|" * (len(names) + 2)]
    for value, name, accs in rows:
        lines.append(f"| {value} | {name} | " + " | ".join(_cell(accs.get(v)) for v in names) + " |")
    return "\n".join(lines) + "\n"


def plot(param: str, names: list[str], rows: list[tuple], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, v in enumerate(names):
        pts = [(float(val), accs[v]) for val, _, accs in rows if v in accs]
        if not pts:
            continue
        xs = [x for x, _ in pts]
        ys = [100 * s["mean"] for _, s in pts]
        err = [[100 * (s["mean"] - _bound(s, "ci_low")) for _, s in pts],
               [100 * (_bound(s, "ci_high") - s["mean"]) for _, s in pts]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=4, color=_color(v, i), label=LABELS.get(v, v))
    finish(fig, ax, param, "test accuracy (%)", f"sweep over {param} (mean, 95% CI over seeds)", path)


def run_sweep(param: str, exp_show_json: str | None = None) -> Path:
    if exp_show_json is None:
        res = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"`dvc exp show --json` failed: {res.stderr.strip()}")
        exp_show_json = res.stdout
    names, rows = table(experiments(json.loads(exp_show_json)), param)
    if not rows:
        raise RuntimeError(f"no experiment with {param} and {SUMMARY_JSON} found in `dvc exp show`; run the sweep "
                           f"first, e.g. dvc exp run --queue -S '{param}=0.1,0.5,0.9' && dvc queue start")
    REPORTS.mkdir(exist_ok=True)
    md = REPORTS / f"sweep_{param}.md"
    io.save_text(markdown(param, names, rows), md)
    png = REPORTS / f"sweep_{param}.png"
    tmp = REPORTS / f".sweep_{param}.tmp.png"
    plot(param, names, rows, tmp)
    tmp.replace(png)
    print(md.read_text())
    print(f"wrote {md} and {png}")
    return md
