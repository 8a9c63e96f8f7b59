"""Question 3, what can be pruned while distilling: ``kdlab prune_teacher`` prunes the teacher to each target
size by each criterion (:mod:`kdlab.channels`); ``kdlab pruned_student`` trains one student from such a model; ``kdlab pruning``
gathers the study.

Target sizes (``prune.sizes``) are multiples of the default student's parameter count (``student.arch`` x
``student.width``). At every size, the teacher pruned by ``prune.criterion`` is trained four ways over
``study.seeds``: its pruned weights with KD (``prune...kd``) or on labels (``prune...raw``), and the same shape
freshly initialised with KD or on labels (``shape...``). At the first size, the teacher pruned by each criterion
of ``prune.compare`` is trained with KD too, so every criterion can be set against the main one and against
``random``. Students train exactly like the main study's (student.epochs, student.lr, the cached views).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from kdlab import channels, distill, io, stats, tracking
from kdlab.models import count_params
from kdlab.params import BASELINE, LossParams, Params
from kdlab.present import ci, diff, finish, headline_gain, plt, table, test_name, verdict, yerr
from kdlab.schema import ParamsError, flatten
from kdlab.stages import Run, train_run
from kdlab.surgery import keep_blocks, reinit
from kdlab.train import accuracy, make_optimizer, make_schedule, predict, step
from kdlab.workspace import (PROFILE_PLOT, PRUNE_JSON, PRUNED_TEACHERS, PRUNING_JSON, PRUNING_MD, build_model, context,
                             load_teacher, memory_format, model_from_checkpoint, run_files, train_batches)

INITS = ("prune", "shape")
VARIANTS = ("kd", BASELINE)


def pruned_models(p: Params) -> list[tuple[str, float]]:
    """(criterion, size) of every pruned teacher the study needs."""
    first = p.prune.sizes[0]
    return [(p.prune.criterion, s) for s in p.prune.sizes] + [(c, first) for c in p.prune.compare]


def model_name(criterion: str, size: float) -> str:
    return f"{criterion}.x{float(size)}"  # x1.0, x0.5: as dvc.yaml writes ${item.size}


def run_name(init: str, criterion: str, size: float, variant: str) -> str:
    """``prune.activation.x1.0.kd``: the pruned weights, trained with KD; ``shape...``: that shape, re-initialised."""
    return f"{init}.{model_name(criterion, size)}.{variant}"


def groups(p: Params) -> list[tuple[str, float, str, str]]:
    """(criterion, size, init, variant) of every student group of the study, in the table's order."""
    out = [(p.prune.criterion, s, init, v) for s in p.prune.sizes for init in INITS for v in VARIANTS]
    return out + [(c, p.prune.sizes[0], "prune", "kd") for c in p.prune.compare]


def stage_of(p: Params, criterion: str, size: float, init: str, variant: str, seed: int) -> str:
    if criterion != p.prune.criterion:
        return f"criteria@{criterion}-{seed}"
    return f"{'pruned_student' if variant == 'kd' else 'pruned_student_raw'}@{float(size)}-{init}-{seed}"


# ---------------------------------------------------------------- kdlab prune_teacher

def kd_finetuner(kd, batches, steps: int, lr: float, tp, ctx):
    """``between(model, pruning_step)`` for iterative pruning: ``steps`` training steps of the KD method ``kd`` on
    ``batches`` (cached logits) at ``lr``, warm-up and decay as in training (``tp``: the train params)."""
    def between(model, pruning_step: int) -> None:
        opt = make_optimizer(model.parameters(), lr, tp)
        sched = make_schedule(opt, steps, tp)
        model.train()
        done, epoch = 0, 1000 * pruning_step  # fresh permutations, apart from training's epochs
        while done < steps:
            for batch in batches.epoch(epoch):
                step(lambda b: kd(model, b), batch, opt, sched, device=ctx.device, precision=ctx.precision)
                done += 1
                if done == steps:
                    break
            epoch += 1
        model.eval()
    return between


def _finetuner(p: Params, ctx, seed: int):
    """The default study's fine-tuner: ``prune.finetune_steps`` KD steps from the cached logits at student.lr, with
    ``prune.finetune_alpha`` and ``finetune_temperature``, not ``loss.*``: the pruned teachers do not depend on the
    students' loss."""
    loss = LossParams(alpha=p.prune.finetune_alpha, temperature=p.prune.finetune_temperature)
    kd = distill.build("kd", replace(p, loss=loss))
    return kd_finetuner(kd, train_batches(p, ctx, kd, seed, {}), p.prune.finetune_steps, p.student.lr, p.train, ctx)


def run_prune_teacher(p: Params) -> dict:
    ctx = context(p, p.teacher.seed)
    t, teacher = load_teacher(p, ctx)
    base = keep_blocks(teacher, p.prune.keep, "prune.keep") if p.prune.keep else teacher
    train, val = ctx.splits["train"], ctx.splits["val"]
    n = p.prune.calibration_images
    calib = (ctx.normalize(train["images"][:n].to(ctx.device)), train["labels"][:n].to(ctx.device))
    unit = count_params(build_model(p.student, ctx))
    summary = {"student_params": unit, "teacher_params": count_params(teacher), "models": {}}
    between = _finetuner(p, ctx, p.teacher.seed) if p.prune.steps > 1 else None
    rows = []
    with tracking.run("prune_teacher", "prune_teacher", flatten(p)) as run:
        for criterion, size in pruned_models(p):
            name = model_name(criterion, size)
            target = round(size * unit)
            model, histories = channels.prune_iteratively(base, criterion, target, calib, p.prune.steps, between,
                                                          p.prune.max_ratio, seed=p.teacher.seed)
            val_acc = accuracy(predict(model, val["images"], val["labels"], ctx.normalize, p.train.eval_batch_size,
                                       p.train.precision), val["labels"])
            kept = channels.channel_profile(teacher, model)
            # "stages" (a ResNet layer's share of channels kept) and "channels": the keys of metrics/prune.json
            entry = {"criterion": criterion, "size": size, "target_params": target, "params": count_params(model),
                     "val_acc_pruned": val_acc, "stages": channels.layer_profile(kept, teacher), "channels": kept}
            io.save_torch({"arch": t["arch"], "width": t["width"], "in_channels": t["in_channels"],
                           "classes": t["classes"], "blocks": p.prune.keep or None, "pruning": histories,
                           "state_dict": model.state_dict(), **entry}, PRUNED_TEACHERS / f"{name}.pt")
            summary["models"][name] = entry
            rows += [{"model": name, "stage": st, "kept": frac} for st, frac in entry["stages"].items()]
            run.log({f"prune/{name}/params": entry["params"], f"prune/{name}/val_acc_pruned": val_acc})
            print(f"{name}: {entry['params']:,} parameters (target {target:,}), val accuracy before training "
                  f"{val_acc:.4f}; channels kept: " + ", ".join(f"{k} {v:.0%}" for k, v in entry["stages"].items()))
        io.save_json(summary, PRUNE_JSON)
        io.save_json(rows, PROFILE_PLOT)
        run.log_artifact(PRUNE_JSON)
    return summary


# ---------------------------------------------------------------- kdlab pruned_student

def run_pruned_student(p: Params, size: float, criterion: str, init: str, variant: str, seed: int) -> dict:
    """One student: the teacher pruned by ``criterion`` to ``size`` (``init=prune``) or that shape freshly
    initialised (``init=shape``), trained with ``variant`` (kd or raw)."""
    if init not in INITS:
        raise ParamsError("--init", f"unknown {init!r}; allowed: {', '.join(INITS)}")
    method = distill.build(variant, p)
    if method.uses_teacher_model or method.builds_from_teacher:
        raise ParamsError("--variant", f"{variant} needs the teacher itself; a pruned student trains with a "
                          f"logits method or on labels ({', '.join(VARIANTS)})")
    ctx = context(p, seed)
    src = PRUNED_TEACHERS / f"{model_name(criterion, size)}.pt"
    ckpt = io.load_torch(src, "dvc repro prune_teacher")
    model = model_from_checkpoint(ckpt, ctx)
    if init == "shape":
        reinit(model)  # torch's generator, seeded with this run's seed by context()
    model = memory_format(model, p.student, ctx).train()
    resume_key = {"pruned_sha256": io.sha256(src)}
    batches = train_batches(p, ctx, method, seed, resume_key)
    method.attach(model, None, ctx.normalize(ctx.splits["train"]["images"][:32].to(ctx.device)))
    method.to(ctx.device)
    name = run_name(init, criterion, size, variant)
    arch = {k: ckpt[k] for k in ("arch", "width", "blocks", "pruning")}
    start = "with its pruned weights" if init == "prune" else "that shape freshly initialised"
    about = f"Question 3: the teacher pruned by `{criterion}` to x{size} of the student's parameters, {start}. "
    return train_run(p, ctx, Run(f"{name}-{seed}", "student", p.student, seed, method, batches, model,
                                 run_files(name, seed, "pruned"),
                                 {"variant": name, "init": init, "criterion": criterion, "size": size}, resume_key,
                                 arch, about=about, method_name=variant))


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
