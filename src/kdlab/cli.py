"""``kdlab <stage>``: loads and validates params.yaml, then calls the stage."""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys


def _check(p, args):
    from kdlab.pipeline.check import run_check
    run_check(p, args.params)


def _prepare(p, args):
    from kdlab.core.data import prepare
    from kdlab.pipeline.workspace import PREPARED

    meta = prepare(p.data, PREPARED)
    print(f"prepared {p.data.name}: {meta['sizes']} images of {meta['channels']}x{meta['image_size']}^2, "
          f"{meta['classes']} classes")


def _teacher(p, args):
    from kdlab.pipeline.stages import run_teacher
    run_teacher(p)


def _cache(p, args):
    from kdlab.pipeline.cache import run_cache
    run_cache(p)


def _student(p, args):
    from kdlab.pipeline.stages import run_student
    run_student(p, args.variant, args.seed)


def _part(p, args):
    from kdlab.pipeline.stages import run_student
    run_student(p, args.variant, args.seed, at=args.at, parts=True)


def _parts(p, args):
    from kdlab.analysis.parts import run_parts
    run_parts(p)


def _prune_teacher(p, args):
    from kdlab.pipeline.pruning import run_prune_teacher
    run_prune_teacher(p)


def _pruned_student(p, args):
    from kdlab.pipeline.pruning import run_pruned_student
    run_pruned_student(p, args.size, args.criterion, args.init, args.variant, args.seed)


def _pruning(p, args):
    from kdlab.analysis.pruning import run_pruning
    run_pruning(p)


def _evaluate(p, args):
    from kdlab.analysis.evaluate import run_evaluate
    run_evaluate(p)


def _report(p, args):
    from kdlab.analysis.report import run_report
    from kdlab.analysis.results import frame, metrics_files, run_results
    run_report(p, metrics_files(p), frame(p))
    run_results(p)  # reports/results.csv: the same stage's table of every run


def _results(p, args):
    from pathlib import Path

    from kdlab.analysis.results import run_results
    run_results(p, Path(args.out), named=True)  # the named studies too; the report stage's CSV is the default's


def _q1(stage):
    """A stage of question 1's study (studies/q1): its params file is --study."""
    def call(p, args):
        from kdlab.pipeline import q1

        q = q1.load(args.study)
        if stage == "teacher":
            q1.run_q1_teacher(p, q, args.teacher)
        elif stage == "cache":
            q1.run_q1_cache(p, q, args.teacher)
        else:
            q1.run_q1_student(p, q, args.variant, args.teacher, args.width, args.epochs, args.seed)
    return call


def _q1_report(p, args):
    from kdlab.analysis.q1_report import run_q1_report
    from kdlab.pipeline import q1
    run_q1_report(p, q1.load(args.study))


def _q23(stage):
    """A stage of the question-2/3 study with controls (studies/q23): its params file is --study."""
    def call(p, args):
        from kdlab.pipeline import q23

        q = q23.load(args.study)
        if stage == "teacher":
            q23.run_q23_teacher(p, q, args.teacher)
        elif stage == "cache":
            q23.run_q23_cache(p, q)
        elif stage == "student":
            q23.run_q23_student(p, q, args.arm, args.init, args.epochs, args.seed)
        elif stage == "prune":
            q23.run_q23_prune(p, q)
        elif stage == "cka":
            q23.run_q23_cka(p, q)
        else:
            from kdlab.analysis.q23_report import run_q23_report
            run_q23_report(p, q, q23.report_inputs(q))
    return call


def _sweep(p, args):
    from kdlab.analysis.sweep import run_sweep
    run_sweep(args.param, by=args.by)


def _bench(p, args):
    from kdlab.pipeline.bench import run_bench
    run_bench(p, quick=args.quick, rounds=args.rounds, steps=args.steps, workers=args.workers,
              with_compile=not args.no_compile)


def _readme(p, args):
    from kdlab.analysis.readme import run_readme
    run_readme()


#: the question-2/3 study's stages (kdlab q23_<stage>)
Q23_STAGES = ("teacher", "cache", "student", "prune", "cka", "report")
#: the commands that train, and so run under torchrun when train.nproc > 1 (see kdlab.infra.distributed)
TRAINING_COMMANDS = ("teacher", "student", "part", "pruned_student", "q1_teacher", "q1_student", "q23_teacher",
                     "q23_student")

STAGES = {"check": _check, "prepare": _prepare, "teacher": _teacher, "cache": _cache, "student": _student, "part": _part,
          "parts": _parts, "prune_teacher": _prune_teacher, "pruned_student": _pruned_student, "pruning": _pruning,
          "evaluate": _evaluate, "report": _report, "q1_teacher": _q1("teacher"), "q1_cache": _q1("cache"),
          "q1_student": _q1("student"), "q1_report": _q1_report, **{f"q23_{s}": _q23(s) for s in Q23_STAGES},
          "results": _results, "sweep": _sweep, "readme": _readme,
          "bench": _bench, "ui": None}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="kdlab",
        description="kdlab pipeline stages (normally run by `dvc repro`; see dvc.yaml). `check` validates all of "
                    "params.yaml (every method's options and the architectures too), the pipeline's first stage. "
                    "`part` trains one "
                    "student of the question-2 study (`--variant parts.method --at LAYER`, or `--variant` one of "
                    "parts.init) and `parts` measures that study. Question 3: `prune_teacher` prunes the teacher to "
                    "prune.sizes by each criterion, `pruned_student` trains one student from it (`--size --criterion --init "
                    "prune|shape --variant kd|raw --seed`; defaults: the first size, prune.criterion, prune, kd), "
                    "`pruning` measures that study. Question 1 in depth (studies/q1/dvc.yaml): `q1_teacher --teacher RUN`, "
                    "`q1_cache --teacher T`, `q1_student --variant V [--teacher T] --width W --epochs E --seed S`, "
                    "`q1_report`, reading `--study` (studies/q1/params.yaml). Questions 2 and 3 with controls (studies/q23/dvc.yaml): "
                    "`q23_teacher --teacher RUN`, `q23_cache`, `q23_student --arm A --init I --epochs E --seed S`, "
                    "`q23_prune`, `q23_cka`, `q23_report`, reading `--study` (studies/q23/params.yaml). Extra commands: "
                    "`results [-o CSV]` writes every run of every study (the default and studies/q1, studies/q23) as one "
                    "tidy table (pandas); "
                    "`sweep --param KEY [--by KEY2]` gathers DVC experiments into a table and plot; `readme` copies "
                    "metrics/summary.md into README.md; `ui` starts the MLflow UI on the project's store; `bench` times "
                    "the same KD step several ways (kdlab raw / cached / online, DataLoader+PIL, torchdistill).",
    )
    ap.add_argument("stage", choices=STAGES, help="what to run")
    ap.add_argument("--variant", help="student: the distillation variant (raw or one of study.variants)")
    ap.add_argument("--seed", type=int, help="student, part: the seed (one of study.seeds)")
    ap.add_argument("--at", help="part: the ResNet layer to place parts.method's feature loss at (one of parts.layers)")
    ap.add_argument("--size", type=float, help="pruned: the target size (one of prune.sizes; default the first)")
    ap.add_argument("--criterion", help="pruned: the pruning criterion (default prune.criterion)")
    ap.add_argument("--init", default="prune", help="q23_student: random, carved, pruned or shape; pruned_student: "
                    "prune (the pruned weights) or shape (that shape, "
                    "freshly initialised); default prune")
    ap.add_argument("--teacher", help="q1_*: a teacher run of q1.teachers (q1_teacher), or one of q1.cached; "
                    "q23_teacher: a run of q23.teachers")
    ap.add_argument("--arm", help="q23_student: one of q23.arms")
    ap.add_argument("--width", type=float, help="q1_student: the student's width (q1.student.width or one of q1.widths)")
    ap.add_argument("--epochs", type=int, help="q1_student: the student's epochs (one of q1.budgets); q23_student: "
                    "q23.epochs or q23.matched_epochs")
    ap.add_argument("--study", help="q1_*, q23_*: the study's params file (default studies/q1/params.yaml, "
                    "studies/q23/params.yaml)")
    ap.add_argument("--param", default="loss.alpha", help="sweep: the swept param (default loss.alpha)")
    ap.add_argument("--by", help="sweep: a second swept param (a grid): one curve per value, e.g. loss.temperature")
    ap.add_argument("-o", "--out", default="reports/results_all.csv", help="results: the CSV to write (default "
                    "reports/results_all.csv; the report stage writes reports/results.csv, the default study's runs)")
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a param, e.g. -S loss.alpha=0.7 (repeatable)")
    ap.add_argument("--port", type=int, default=5000, help="ui: port on 127.0.0.1 (default 5000)")
    ap.add_argument("--quick", action="store_true", help="bench: one round of 2 steps (a smoke test)")
    ap.add_argument("--rounds", type=int, default=3, help="bench: interleaved rounds (default 3; the median counts)")
    ap.add_argument("--steps", type=int, help="bench: timed steps per measurement (default 40)")
    ap.add_argument("--workers", type=int, help="bench: DataLoader workers for the PIL rows (default: up to 2)")
    ap.add_argument("--no-compile", action="store_true", help="bench: skip the torch.compile row")
    return ap


def _check_pruned_args(p, args) -> str | None:
    from kdlab.pipeline.pruning import INITS, VARIANTS, pruned_models

    args.size = p.prune.sizes[0] if args.size is None else args.size
    args.criterion = args.criterion or p.prune.criterion
    args.variant = args.variant or "kd"
    if args.size not in p.prune.sizes:
        return f"--size {args.size} is not in prune.sizes {p.prune.sizes}"
    if (args.criterion, args.size) not in pruned_models(p):
        return (f"--criterion {args.criterion!r} at --size {args.size}: no such pruned teacher; the study prunes "
                f"prune.criterion={p.prune.criterion!r} at every size and prune.compare {p.prune.compare} at the "
                f"first size ({p.prune.sizes[0]})")
    if args.init not in INITS:
        return f"--init {args.init!r}: allowed: {', '.join(INITS)}"
    if args.variant not in VARIANTS:
        return f"--variant {args.variant!r}: a pruned student trains with one of {', '.join(VARIANTS)}"
    if args.seed not in p.study.seeds:
        return f"--seed {args.seed!r} is not in study.seeds {p.study.seeds}"
    return None


def _check_q1_args(args) -> str | None:
    from kdlab.infra.schema import ParamsError
    from kdlab.pipeline import q1

    try:
        q = q1.load(args.study)
    except ParamsError as e:
        return str(e)
    if args.stage == "q1_teacher" and args.teacher not in q.teachers:
        return f"--teacher {args.teacher!r} is not in q1.teachers {sorted(q.teachers)}"
    if args.stage == "q1_cache" and args.teacher not in q.cached:
        return f"--teacher {args.teacher!r} is not in q1.cached {list(q.cached)}"
    if args.stage != "q1_student":
        return None
    allowed = {"variant": ["raw", *q.variants, *q.controls], "width": [q.student.width, *q.widths],
               "epochs": q.budgets, "seed": q.seeds}
    for key, values in allowed.items():
        if getattr(args, key) not in values:
            return f"--{key} {getattr(args, key)!r}: the study's are {values}"
    if args.teacher is not None and args.teacher not in q.cached:
        return f"--teacher {args.teacher!r} is not in q1.cached {list(q.cached)}"
    return None


def _check_q23_args(args) -> str | None:
    from kdlab.infra.schema import ParamsError
    from kdlab.pipeline import q23

    try:
        q = q23.load(args.study)
    except ParamsError as e:
        return str(e)
    if args.stage == "q23_teacher" and args.teacher not in q.teachers:
        return f"--teacher {args.teacher!r} is not in q23.teachers {sorted(q.teachers)}"
    if args.stage != "q23_student":
        return None
    if (args.arm, args.init, args.epochs) not in q23.expected_students(q):
        return (f"--arm {args.arm!r} --init {args.init!r} --epochs {args.epochs!r} is no student group of the study: "
                f"{', '.join(f'{a} {i} {e}' for a, i, e in q23.expected_students(q))}")
    if args.seed not in q.seeds:
        return f"--seed {args.seed!r}: the study's are {q.seeds}"
    return None


def _check_run_args(p, args, baseline: str) -> str | None:
    """What is wrong with ``--variant/--at/--seed`` (and pruned_student's options), if anything."""
    if args.stage == "pruned_student":
        return _check_pruned_args(p, args)
    if args.stage.startswith(("q1_", "q23_")):
        args.study = args.study or f"studies/{args.stage.split('_')[0]}/params.yaml"
        return _check_q1_args(args) if args.stage.startswith("q1_") else _check_q23_args(args)
    if args.stage not in ("student", "part"):
        return None
    if args.stage == "student":
        if args.variant != baseline and args.variant not in p.study.variants:
            return f"--variant {args.variant!r} is neither {baseline!r} nor in study.variants {p.study.variants}"
        if args.at:
            return "--at is for `kdlab part` (the question-2 study)"
    elif args.at is not None:
        if args.variant != p.parts.method:
            return f"--variant {args.variant!r} with --at: the placed method is parts.method={p.parts.method!r}"
        if args.at not in p.parts.layers:
            return f"--at {args.at!r} is not in parts.layers {p.parts.layers}"
    elif args.variant not in p.parts.init:
        return (f"--variant {args.variant!r} is not in parts.init {p.parts.init} (or give --at LAYER for "
                f"parts.method={p.parts.method!r})")
    if args.seed not in p.study.seeds:
        return f"--seed {args.seed!r} is not in study.seeds {p.study.seeds}"
    return None


def ui(port: int) -> int:
    from kdlab.infra import tracking

    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", tracking.tracking_uri(),
           "--default-artifact-root", (tracking.root() / "mlartifacts").as_uri()]
    views, base = tracking.ui_paths(), f"http://127.0.0.1:{port}/"
    print(f"MLflow UI over {tracking.tracking_uri()}:\n  every training run:  {base}{views['kdlab-runs']}\n"
          f"  the studies:         {base}{views['kdlab-studies']}", flush=True)
    return subprocess.call(cmd, env=env)


def main(argv: list[str] | None = None) -> int:
    """``kdlab`` as a program (``argv`` None): through a warm server when one is ready (kdlab.warm: the same
    run without the start-up cost), else :func:`run` here."""
    if argv is None:
        from kdlab import warm

        if warm.enabled(sys.argv[1:]):
            code = warm.run(sys.argv[1:])
            if code is not None:
                return code
    return run(argv)


def run(argv: list[str] | None = None) -> int:
    """Run one command in this process."""
    args = _parser().parse_args(argv)
    if args.stage == "ui":
        return ui(args.port)
    from kdlab.infra.io import StageError
    from kdlab.infra.schema import ParamsError
    from kdlab.pipeline import params as params_mod

    try:
        p = params_mod.load(args.params, args.overrides)
    except ParamsError as e:
        print(f"kdlab: {e}", file=sys.stderr)
        return 2
    problem = _check_run_args(p, args, params_mod.BASELINE)
    if problem:
        print(f"kdlab: {problem}", file=sys.stderr)
        return 2
    if args.stage in TRAINING_COMMANDS and p.train.nproc > 1:  # this process becomes torchrun
        from kdlab.infra.distributed import launch

        launch(p.train.nproc, sys.argv[1:] if argv is None else argv)
    # SIGTERM (a scheduler, `kill`) ends a stage like Ctrl-C: the last complete epoch's checkpoint stays,
    # the MLflow run is closed as KILLED, and rerunning the stage resumes
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # a shell starts background jobs with SIGINT ignored, and Python then keeps it ignored: `kill -INT` (and a
    # test's SIGINT) would be lost on a stage run under `cmd &`, so the handler is installed explicitly
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        STAGES[args.stage](p, args)
    except KeyboardInterrupt:
        print(f"kdlab {args.stage}: interrupted; rerun the stage to resume from its last complete epoch",
              file=sys.stderr)
        return 130
    except ParamsError as e:  # a method's own options, or all of params.yaml (kdlab check), checked when the method is built
        print(f"kdlab {args.stage}: {e}", file=sys.stderr)
        return 2
    except (StageError, FloatingPointError) as e:  # expected failures: one line naming the file and the fix
        print(f"kdlab {args.stage}: {e}", file=sys.stderr)
        return 1
    finally:
        if "kdlab.infra.distributed" in sys.modules:  # leave torchrun's process group (a no-op alone)
            sys.modules["kdlab.infra.distributed"].finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
