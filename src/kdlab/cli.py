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


def _train(p, args):
    from kdlab.pipeline.train import train
    train(p, args.spec())


def _cache(p, args):
    from kdlab.pipeline.cache import run_cache
    run_cache(p)


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

        q1.run_q1_cache(p, q1.load(args.study), args.teacher)
    return call


def _q1_report(p, args):
    from kdlab.analysis.q1_report import run_q1_report
    from kdlab.pipeline import q1
    run_q1_report(p, q1.load(args.study))


def _pilot(p, args):
    from kdlab.analysis.pilot import run_pilot_report
    from kdlab.pipeline.pilot import run_pilot

    study = args.pilot  # loaded and checked with the arguments
    run_pilot(p, study)
    run_pilot_report(study.pilot, study.metrics, study.metrics / "pilot.json", study.report, study.name,
                     study.train_images)


def _q23(stage):
    """A stage of the question-2/3 study with controls (studies/q23): its params file is --study."""
    def call(p, args):
        from kdlab.pipeline import q23

        q = q23.load(args.study)
        if stage == "cache":
            q23.run_q23_cache(p, q)
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
Q23_STAGES = ("cache", "prune", "cka", "report")
#: the named studies (studies/<name>/params.yaml, whose one section is <name>) and their stage modules
NAMED_STUDIES = {"q1": "kdlab.pipeline.q1", "q23": "kdlab.pipeline.q23"}

#: every command; the one that trains runs under torchrun when train.nproc > 1 (see kdlab.infra.distributed)
STAGES = {"check": _check, "prepare": _prepare, "train": _train, "cache": _cache, "evaluate": _evaluate,
          "report": _report, "q1_cache": _q1("cache"), "q1_report": _q1_report, "pilot": _pilot, **{f"q23_{s}": _q23(s) for s in Q23_STAGES},
          "results": _results, "sweep": _sweep, "readme": _readme, "bench": _bench, "ui": None}
#: the commands a warm server runs (kdlab.warm): all but the bench (it times itself) and the UI
WARM_COMMANDS = tuple(c for c in STAGES if c not in ("bench", "ui"))


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="kdlab",
        description="kdlab pipeline stages (normally run by `dvc repro`; see dvc.yaml). `check` validates all of "
                    "params.yaml (every method's options and the architectures too), the pipeline's first stage. "
                    "`train [--study FILE] RUN` trains one teacher or student of a study, named by its model file "
                    "under models/ (models/<study>/ for a named study) without .pt: `teacher`, `students/kd-0`; "
                    "`--study studies/q1/params.yaml "
                    "teachers/main` or `students/kd.main-w0.5-e15-s0`; `--study studies/q23/params.yaml "
                    "students/kd.carved-e10-s0`. An unknown RUN lists the study's runs. Question 1 in depth (studies/q1/dvc.yaml): `q1_cache --teacher T`, "
                    "`q1_report`; questions 2 and 3 with controls (studies/q23/dvc.yaml): `q23_cache`, `q23_prune`, "
                    "`q23_cka`, `q23_report`; each reads `--study` (default studies/q1/params.yaml, "
                    "studies/q23/params.yaml). `pilot --study FILE`: a named study's recipe pilot (its `pilot` section; "
                    "validation only). Extra commands: "
                    "`results [-o CSV]` writes every run of every study (the default and studies/q1, studies/q23) as one "
                    "tidy table (pandas); "
                    "`sweep --param KEY [--by KEY2]` gathers DVC experiments into a table and plot; `readme` copies "
                    "metrics/summary.md into README.md; `ui` starts the MLflow UI on the project's store; `bench` times "
                    "the same KD step several ways (kdlab raw / cached / online, DataLoader+PIL, torchdistill).",
    )
    ap.add_argument("stage", choices=STAGES, help="what to run")
    ap.add_argument("run", nargs="?", help="train: the run, named by its model file (see above)")
    ap.add_argument("--teacher", help="q1_cache: one of q1.cached")
    ap.add_argument("--study", help="train: a named study's params file (default: the default study, params.yaml); "
                    "q1_*, q23_*: the study's params file (default studies/q1/params.yaml, studies/q23/params.yaml); "
                    "pilot: required")
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


def _study_runs(p, study: str | None) -> dict:
    """Every training run of the default study (``study`` None) or of the named study whose params file is
    ``study``, by name."""
    import importlib
    from pathlib import Path

    from kdlab.infra.schema import ParamsError, read_yaml

    if study is None:
        from kdlab.pipeline.stages import runs
        return runs(p)
    sections = list(read_yaml(Path(study)) or {})
    if len(sections) != 1 or sections[0] not in NAMED_STUDIES:
        raise ParamsError(study, f"a named study's params file holds one section, one of {sorted(NAMED_STUDIES)}; "
                          f"found {sections}")
    module = importlib.import_module(NAMED_STUDIES[sections[0]])
    return module.runs(p, module.load(study))


def _check_train_args(p, args) -> str | None:
    from kdlab.infra.schema import ParamsError

    try:
        runs = _study_runs(p, args.study)
    except ParamsError as e:
        return str(e)
    if args.run not in runs:
        import difflib
        from collections import Counter

        kinds = Counter(name.split("/")[0] + ("/..." if "/" in name else "") for name in runs)
        close = difflib.get_close_matches(args.run, list(runs), n=5, cutoff=0.5)
        return (f"no run {args.run!r} in {args.study or 'the default study'} ({len(runs)} runs: "
                f"{', '.join(f'{n} {k}' for k, n in kinds.items())})"
                + (f"; the closest: {', '.join(close)}" if close else ""))
    args.spec = runs[args.run]
    return None


def _check_named_args(args) -> str | None:
    """What is wrong with a named study's stage arguments (q1_cache's ``--teacher``), if anything."""
    import importlib

    from kdlab.infra.schema import ParamsError

    name = args.stage.split("_")[0]
    args.study = args.study or f"studies/{name}/params.yaml"
    try:
        q = importlib.import_module(NAMED_STUDIES[name]).load(args.study)
    except ParamsError as e:
        return str(e)
    if args.stage == "q1_cache" and args.teacher not in q.cached:
        return f"--teacher {args.teacher!r} is not in q1.cached {list(q.cached)}"
    return None


def _check_run_args(p, args) -> str | None:
    """What is wrong with the command's arguments, if anything."""
    if (args.run is not None) != (args.stage == "train"):
        return "train takes one run (kdlab train RUN); no other command takes one"
    if args.stage == "train":
        return _check_train_args(p, args)
    if args.stage.split("_")[0] in NAMED_STUDIES:
        return _check_named_args(args)
    if args.stage == "pilot":
        if not args.study:
            return "pilot takes a named study's params file: kdlab pilot --study studies/q1/params.yaml"
        from kdlab.infra.schema import ParamsError
        from kdlab.pipeline.pilot import load

        try:
            args.pilot = load(args.study)
        except ParamsError as e:
            return str(e)
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

        if warm.enabled(sys.argv[1:], WARM_COMMANDS):
            code = warm.run(sys.argv[1:])
            if code is not None:
                return code
    return run(argv)


def run(argv: list[str] | None = None) -> int:
    """Run one command in this process."""
    args = _parser().parse_intermixed_args(argv)
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
    problem = _check_run_args(p, args)
    if problem:
        print(f"kdlab: {problem}", file=sys.stderr)
        return 2
    if args.stage == "train" and p.train.nproc > 1:  # this process becomes torchrun
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
