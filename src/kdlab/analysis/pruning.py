"""Question 3 gathered: ``kdlab pruning`` summarises the pruned teachers (metrics/prune.json) and the students
trained from them (:mod:`kdlab.pipeline.pruning`) into metrics/pruning.json, its table, plot, headline and report
section: intervals over seeds and Welch comparisons (:mod:`kdlab.analysis.stats`).
"""
from __future__ import annotations

from pathlib import Path

from kdlab.analysis import stats
from kdlab.analysis.present import ci, diff, finish, headline_gain, plt, table, test_name, verdict, yerr
from kdlab.infra import io, tracking
from kdlab.infra.schema import flatten
from kdlab.pipeline.params import BASELINE, Params
from kdlab.pipeline.stages import INITS, VARIANTS, groups, model_name, pruned_models, run_name, stage_of
from kdlab.pipeline.workspace import PRUNE_JSON, PRUNING_JSON, PRUNING_MD, run_files

# ---------------------------------------------------------------- kdlab pruning

def comparisons(p: Params) -> list[tuple[str, str]]:
    """(a, b) pairs tested. At every size: pruned vs fresh weights under KD and on labels, KD vs labels from
    pruned and from fresh weights. At the first size: every other criterion against the main one, and every
    criterion against ``random`` when random is among them."""
    c, first = p.prune.criterion, p.prune.sizes[0]
    pairs = []
    for s in p.prune.sizes:
        r = {(i, v): run_name(i, c, s, v) for i in INITS for v in VARIANTS}
        pairs += [(r["prune", "kd"], r["shape", "kd"]), (r["prune", BASELINE], r["shape", BASELINE]),
                  (r["prune", "kd"], r["prune", BASELINE]), (r["shape", "kd"], r["shape", BASELINE])]
    criteria = [c, *p.prune.compare]
    at = {o: run_name("prune", o, first, "kd") for o in criteria}
    pairs += [(at[o], at[c]) for o in p.prune.compare if o != "random"]
    if "random" in criteria:
        pairs += [(at[o], at["random"]) for o in criteria if o != "random"]
    return list(dict.fromkeys(pairs))


def summarize(p: Params, runs, pruned: dict) -> dict:
    """pruning.json from a tidy DataFrame of the runs (one row per (group, seed): test_acc, params) and the
    pruned teachers' metrics/prune.json."""
    acc = stats.intervals(runs, "group", "test_acc")
    params_count = runs.groupby("group", sort=False)["params"].first()
    out = {"criterion": p.prune.criterion, "sizes": p.prune.sizes, "seeds": p.study.seeds,
           "student_params": pruned["student_params"], "teacher_params": pruned["teacher_params"],
           "groups": {}, "comparisons": {}, "pruned": {}}
    for criterion, size, init, variant in groups(p):
        name = run_name(init, criterion, size, variant)
        out["groups"][name] = {"criterion": criterion, "size": size, "init": init, "variant": variant,
                               "params": int(params_count[name]), "test_acc": acc[name]}
    pairs = comparisons(p)
    welch = stats.welch_pairs(runs, "group", "test_acc", pairs)
    for a, b in pairs:
        out["comparisons"][f"{a}_vs_{b}"] = {"a": a, "b": b, "test_acc": welch[f"{a}_vs_{b}"]}
    for criterion, size in pruned_models(p):
        e = pruned["models"][model_name(criterion, size)]
        out["pruned"][model_name(criterion, size)] = {k: e[k] for k in ("params", "target_params", "val_acc_pruned", "stages")}
    return out


def layer_order(layers: dict) -> list[str]:
    """The stem first, then the layers in order (the JSON files keep their keys sorted)."""
    return sorted(layers, key=lambda s: (s != "stem", s))


def markdown(p: Params, summary: dict) -> str:
    import pandas as pd

    n = len(p.study.seeds)
    c = p.prune.criterion
    arms = pd.DataFrame([[f"x{g['size']}", g["init"], g["variant"], g["criterion"], f"{g['params']:,}",
                          ci(g["test_acc"])] for g in summary["groups"].values()],
                        columns=["size", "init", "trained", "criterion", "params", "test accuracy (%)"])
    tests = pd.DataFrame([[f"{e['a']} vs {e['b']}", diff(e["test_acc"], with_p=True)]
                          for e in summary["comparisons"].values()],
                         columns=["comparison", f"difference (points) [95% CI] ({test_name(summary['comparisons'])} p)"])
    layers = layer_order(next(iter(summary["pruned"].values()))["stages"])
    teachers = pd.DataFrame([[name, f"{e['params']:,}", f"{100 * e['val_acc_pruned']:.2f}",
                              *(f"{100 * e['stages'][s]:.0f}%" for s in layers)]
                             for name, e in summary["pruned"].items()],
                            columns=["pruned model", "params", "val accuracy (%)", *(f"kept {s}" for s in layers)])
    lines = [
        f"Question 3 on {p.data.name}: the teacher ({summary['teacher_params']:,} parameters) pruned by channel "
        f"importance to multiples of the student's size ({summary['student_params']:,} parameters), then trained "
        f"for student.epochs={p.student.epochs}. Test accuracy, mean [95% t interval] over {n} seed"
        f"{'s' if n > 1 else ''}. `prune`: the pruned weights; `shape`: the same shape, freshly initialised; "
        f"`kd`: distilled; `raw`: labels only.",
        "",
        table(arms),
        "",
        table(tests),
        "",
        f"Each pruned teacher before any training: parameters, validation accuracy, and the fraction of output "
        f"channels each stage keeps (criterion {c} at every size; the others at x{p.prune.sizes[0]}).",
        "",
        table(teachers),
    ]
    return "\n".join(lines) + "\n"


def run_pruning(p: Params) -> dict:
    pruned = io.load_json(PRUNE_JSON, "dvc repro prune_teacher")
    import pandas as pd

    rows = []
    for criterion, size, init, variant in groups(p):
        name = run_name(init, criterion, size, variant)
        for seed in p.study.seeds:
            _, metrics_path = run_files(name, seed, "pruned")
            rebuild = f"dvc repro {stage_of(p, criterion, size, init, variant, seed)}"
            metrics = io.load_json(metrics_path, rebuild)
            # params: counted by the training stage on the saved model
            rows.append({"group": name, "seed": seed, "test_acc": metrics["test_acc"], "params": metrics["params"]})
    summary = summarize(p, pd.DataFrame(rows), pruned)
    io.save_json(summary, PRUNING_JSON)
    table = markdown(p, summary)
    io.save_text(table, PRUNING_MD)
    print(table)
    with tracking.run("pruning", "pruning", flatten(p)) as run:
        flat = {f"pruning/{g}/test_acc_mean": e["test_acc"]["mean"] for g, e in summary["groups"].items()}
        run.log(flat)
        run.log_to_study(flat)
        run.log_artifact(PRUNING_MD)
    return summary


# ---------------------------------------------------------------- its part of the report

def plot_pruning(p: Params, pruning: dict, path: Path) -> None:
    """Accuracy per arm and size (left), channels kept per layer by each criterion (right)."""
    fig, (ax1, ax2) = plt().subplots(1, 2, figsize=(10, 3.8))
    names = list(pruning["groups"])
    for i, name in enumerate(names):
        g = pruning["groups"][name]
        s = g["test_acc"]
        color = {"prune": "tab:red", "shape": "tab:gray"}[g["init"]]
        ax1.errorbar([i], [100 * s["mean"]], yerr=yerr([s]), fmt="o" if g["variant"] == "kd" else "s",
                     mfc=color if g["variant"] == "kd" else "white", capsize=4, color=color)
    ax1.set_xticks(range(len(names)), [n.replace(".", "\n", 2) for n in names], fontsize=6)
    ax1.set_ylabel("test accuracy (%), mean and 95% CI")
    ax1.set_title("pruned (red) vs fresh (grey); KD filled, labels open")
    for i, (name, e) in enumerate(pruning["pruned"].items()):
        layers = layer_order(e["stages"])
        ax2.plot(range(len(layers)), [100 * e["stages"][st] for st in layers], marker="o", color=f"C{i}",
                 label=f"{name} ({e['params']:,} params)")
        ax2.set_xticks(range(len(layers)), layers)
    finish(fig, ax2, "stage", "output channels kept (%)", "where each criterion prunes", path)


def headline(p: Params, pruning: dict) -> dict:
    """Question 3's part of metrics/headline.json, under short names: at each size, KD against labels and pruned
    against fresh weights (both from the pruned shape, under KD), and the criterion against random at the first
    size; p adjusted by Holm over every question-3 comparison."""
    adjusted = stats.holm({k: c["test_acc"]["p"] for k, c in pruning["comparisons"].items()})
    c, first = p.prune.criterion, p.prune.sizes[0]
    picks = {}
    for s in p.prune.sizes:
        picks[f"x{s}.kd_vs_raw"] = (run_name("prune", c, s, "kd"), run_name("prune", c, s, BASELINE))
        picks[f"x{s}.prune_vs_shape"] = (run_name("prune", c, s, "kd"), run_name("shape", c, s, "kd"))
    picks[f"x{first}.{c}_vs_random"] = (run_name("prune", c, first, "kd"), run_name("prune", "random", first, "kd"))
    out = {}
    for short, (a, b) in picks.items():
        if (key := f"{a}_vs_{b}") in pruning["comparisons"]:
            out[short] = headline_gain(pruning["comparisons"][key]["test_acc"], adjusted[key])
    return {"q3": out}


def pictures(p: Params, pruning: dict) -> dict:
    return {"pruning.png": lambda f: plot_pruning(p, pruning, f)}


def report_section(p: Params, pruning: dict) -> list[str]:
    n = len(p.study.seeds)
    lines = [
        "## Question 3: what can be pruned while distilling?",
        "",
        "The trained teacher is pruned by channel importance (torch-pruning's dependency graph, channels ranked "
        "globally) down to multiples of the student's parameter count, then trained like the students. The "
        "controls are the same shape freshly initialised, and training on labels instead of KD. Regenerate "
        "with `dvc repro pruning report`.",
        "",
        markdown(p, pruning),
    ]
    for key, cmp_ in pruning["comparisons"].items():
        lines.append("- " + verdict(cmp_["a"], cmp_["b"], cmp_, n))
    lines += ["", "![question 3](pruning.png)", ""]
    return lines
