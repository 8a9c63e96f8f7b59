"""``kdlab sweep --param loss.alpha [--by loss.temperature]``: gather DVC experiments into one table and plot.

Run the sweep first (``make sweep``, or e.g. ``dvc exp run --queue -S 'loss.alpha=0.1,0.5,0.9' && dvc queue
start``). This reads ``dvc exp show --json`` (every experiment's params.yaml and metrics/headline.json), groups
the experiments by the swept param and writes reports/sweep_<param>.md and .png: each method's test
accuracy (mean and 95% interval over seeds) against the param's value. With ``--by`` (a grid over two params)
there is one curve per method and value of the second param, in reports/sweep_<param>_by_<by>.md/.png.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from kdlab.analysis.present import LABELS, ci, color, finish, plt, yerr
from kdlab.infra import io
from kdlab.pipeline.params import BASELINE
from kdlab.pipeline.workspace import HEADLINE_JSON, REPORTS


def _get(tree: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def accuracies(headline: dict) -> dict[str, dict]:
    """{method: test accuracy as a :func:`kdlab.analysis.stats.t_interval`-like dict of fractions} from a headline.json
    (``acc`` and its 95% half-width ``acc_ci`` in %); the teacher and the comparisons are left out."""
    out = {}
    for name, e in headline.items():
        if name != "teacher" and isinstance(e, dict) and "acc" in e:
            mean, half = e["acc"] / 100, e.get("acc_ci")
            out[name] = {"mean": mean, "ci_low": None if half is None else mean - half / 100,
                         "ci_high": None if half is None else mean + half / 100}
    return out


def experiments(exp_show: list) -> list[dict]:
    """Flatten ``dvc exp show --json`` into [{"name", "rev", "params", "accs"}]. Records with the same
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
                headline = ((data.get("metrics") or {}).get(str(HEADLINE_JSON)) or {}).get("data")
                if params and headline:
                    key = json.dumps([params, headline], sort_keys=True)
                    found[key] = {"name": node.get("name") or data.get("name") or rev, "rev": rev,
                                  "params": params, "accs": accuracies(headline)}
            for k in ("experiments", "revs"):
                if k in node:
                    walk(node[k])

    walk(exp_show)
    return list(found.values())


def table(exps: list[dict], param: str, by: str | None = None) -> tuple[list[str], list[tuple]]:
    """(methods, rows) with rows = (param value, ``by``'s value or None, experiment name, {method: test_acc
    stats}), sorted by ``by`` then ``param``."""
    rows = []
    for e in exps:
        value = _get(e["params"], param)
        other = _get(e["params"], by) if by else None
        if value is None or (by and other is None):
            continue
        rows.append((value, other, e["name"], e["accs"]))
    rows.sort(key=lambda r: (str(r[1]), r[0], r[2]))
    names = sorted({v for r in rows for v in r[3]}, key=lambda v: (v != "raw", v))
    return names, rows


def _command(param: str, by: str | None) -> str:
    return f"kdlab sweep --param {param}" + (f" --by {by}" if by else "")


def markdown(param: str, names: list[str], rows: list[tuple], by: str | None = None) -> str:
    keys = [param, by] if by else [param]
    head = "| " + " | ".join(keys) + " | experiment | " + " | ".join(LABELS.get(v, v) for v in names) + " |"
    lines = [f"Test accuracy (%) against `{param}`" + (f" and `{by}`" if by else "") + ": mean [95% CI] over "
             f"seeds, one row per DVC experiment (from `dvc exp show`; regenerate with `{_command(param, by)}`).",
             "", head, "|" + "---|" * (len(names) + len(keys) + 1)]
    for value, other, name, accs in rows:
        cells = [value, other] if by else [value]
        lines.append("| " + " | ".join(map(str, cells)) + f" | {name} | "
                     + " | ".join(ci(accs.get(v)) for v in names) + " |")
    return "\n".join(lines) + "\n"


def plot(param: str, names: list[str], rows: list[tuple], path: Path, by: str | None = None) -> None:
    """One curve per method (and per value of ``by``: line styles), mean and 95% CI against ``param``."""
    fig, ax = plt().subplots(figsize=(6.4, 3.8))
    others = list(dict.fromkeys(r[1] for r in rows))
    styles = ["-", "--", ":", "-."]
    for i, v in enumerate(names):
        # the baseline reads no loss.* params: one curve, whatever the second param
        for j, other in enumerate(others[:1] if v == BASELINE else others):
            pts = [(float(val), accs[v]) for val, o, _, accs in rows if o == other and v in accs]
            if not pts:
                continue
            xs = [x for x, _ in pts]
            ys = [100 * s["mean"] for _, s in pts]
            err = yerr([s for _, s in pts])
            label = LABELS.get(v, v) + (f", {by.split('.')[-1]}={other}" if by and v != BASELINE else "")
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=4, color=color(v, i), label=label,
                        linestyle=styles[j % len(styles)])
    title = f"sweep over {param}" + (f" and {by}" if by else "") + " (mean, 95% CI over seeds)"
    finish(fig, ax, param, "test accuracy (%)", title, path)


def run_sweep(param: str, exp_show_json: str | None = None, by: str | None = None) -> Path:
    if exp_show_json is None:
        res = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"`dvc exp show --json` failed: {res.stderr.strip()}")
        exp_show_json = res.stdout
    names, rows = table(experiments(json.loads(exp_show_json)), param, by)
    if not rows:
        keys = f"{param} and {by}" if by else param
        raise RuntimeError(f"no experiment with {keys} and {HEADLINE_JSON} found in `dvc exp show`; run the sweep "
                           f"first, e.g. dvc exp run --queue -S '{param}=0.1,0.5,0.9' && dvc queue start")
    REPORTS.mkdir(exist_ok=True)
    stem = f"sweep_{param}" + (f"_by_{by}" if by else "")
    md = REPORTS / f"{stem}.md"
    io.save_text(markdown(param, names, rows, by), md)
    png = REPORTS / f"{stem}.png"
    tmp = REPORTS / f".{stem}.tmp.png"
    plot(param, names, rows, tmp, by)
    tmp.replace(png)
    print(md.read_text())
    print(f"wrote {md} and {png}")
    return md
