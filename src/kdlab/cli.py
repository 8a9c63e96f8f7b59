"""``kdlab <stage>``: loads and validates params.yaml, then calls the stage."""
from __future__ import annotations

import argparse
import signal
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
    if args.study:  # a named study's cache (its design says of which teacher)
        args.design.STAGES["cache"](p, args.q, args.teacher)
        return
    from kdlab.pipeline.cache import run_cache
    run_cache(p)


def _evaluate(p, args):
    from kdlab.analysis.evaluate import run_evaluate
    run_evaluate(p)


def _report(p, args):
    if args.study:  # a named study's report: kdlab.analysis.<name>_report
        from kdlab.analysis import studies
        studies.report(args.study).report(p, args.q)
        return
    from kdlab.analysis.report import run_report
    from kdlab.analysis.results import frame, metrics_files, run_results
    run_report(p, metrics_files(p), frame(p))
    run_results(p)  # reports/results.csv: the same stage's table of every run


def _results(p, args):
    from pathlib import Path

    from kdlab.analysis.results import run_results
    run_results(p, Path(args.out), named=True)  # the named studies too; the report stage's CSV is the default's


def _named(stage):
    """A stage only named studies have (``prune``, ``cka``): their design runs it."""
    def call(p, args):
        args.design.STAGES[stage](p, args.q)
    return call


def _pilot(p, args):
    from kdlab.analysis.pilot import run_pilot_report
    from kdlab.pipeline.pilot import run_pilot

    study = args.pilot  # loaded and checked with the arguments
    run_pilot(p, study)
    run_pilot_report(study.pilot, study.metrics, study.metrics / "pilot.json", study.report, study.name,
                     study.train_images)


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


#: the commands that take a named study's params file (--study): a named study's stage, by its design
#: (kdlab.analysis.studies); prune and cka only named studies have
STUDY_COMMANDS = ("train", "cache", "report", "prune", "cka")

#: every command; the one that trains runs under torchrun when train.nproc > 1 (see kdlab.infra.distributed)
STAGES = {"check": _check, "prepare": _prepare, "train": _train, "cache": _cache, "evaluate": _evaluate,
          "report": _report, "prune": _named("prune"), "cka": _named("cka"), "pilot": _pilot,
          "results": _results, "sweep": _sweep, "readme": _readme, "bench": _bench, "ui": None}
#: the commands a warm server runs (kdlab.warm): all but the bench (it times itself) and the UI
WARM_COMMANDS = tuple(c for c in STAGES if c not in ("bench", "ui"))


#: each command's one-line help (``kdlab --help``) and its own options (``kdlab COMMAND --help``)
HELP = {
    "check": "validate all of params.yaml (every method's options, the architectures): the pipeline's first stage",
    "prepare": "prepare the data set into data/prepared (uint8 tensors, sha256-stamped)",
    "train": "train one teacher or student of a study, named by its model file under models/ without .pt",
    "cache": "a teacher's logit cache: the teacher's logits for the cached views (default study, or --study)",
    "evaluate": "run every model of the default study on the test split (metrics/summary.json, runs.json)",
    "report": "a study's report, findings and headline metrics from its metrics files (the default study's with "
              "reports/results.csv; a named study's with --study)",
    "prune": "a named study's pruned teachers, and why pruned teachers start at chance (--study)",
    "cka": "a named study's CKA of its students and a reference with its teacher (--study)",
    "pilot": "a named study's recipe pilot (its pilot section; validation only)",
    "results": "every run of every study as one table: prints a summary, writes a CSV (accuracies in percent)",
    "sweep": "gather DVC experiments over a param into a table and a plot",
    "readme": "copy the pipeline's result blocks into README.md and docs/",
    "bench": "time the same KD step several ways (kdlab, DataLoader+PIL, torchdistill)",
    "ui": "the MLflow UI over the project's store, on 127.0.0.1",
}
#: words a user may try for a command, and the command that does it
ALIASES = {"student": "train", "teacher": "train", "baseline": "train", "fit": "train", "test": "evaluate",
           "eval": "evaluate", "validate": "check", "mlflow": "ui", "table": "results", "q1_report": "report",
           "q23_report": "report", "q1_cache": "cache", "q23_cache": "cache", "q23_prune": "prune", "q23_cka": "cka"}


def _study_option(ap: argparse.ArgumentParser, required: bool) -> None:
    default = " (required)" if required else " (default: the default study, params.yaml)"
    ap.add_argument("--study", default=None, help="a named study: its params file (studies/q23/params.yaml) or its "
                    "name (q23)" + default)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    common.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, e.g. -S loss.alpha=0.7 (repeatable)")
    ap = argparse.ArgumentParser(
        prog="kdlab", description="kdlab's commands; the stages are normally run by `dvc repro` (see dvc.yaml and "
        "docs/pipeline.md). `kdlab COMMAND --help` shows a command's own options.")
    sub = ap.add_subparsers(dest="stage", metavar="COMMAND", required=True)
    cmds = {name: sub.add_parser(name, parents=[common], help=text, description=text) for name, text in HELP.items()}
    cmds["train"].add_argument("run", nargs="?", help="the run: `teacher`, `students/kd-0`; with --study "
                               "studies/q1/params.yaml `teachers/main` or `students/kd.main-w0.5-e30-s0`; an unknown "
                               "run lists the study's runs")
    for name in STUDY_COMMANDS:
        _study_option(cmds[name], required=name in ("prune", "cka"))
    for name, cmd in cmds.items():  # a run given to another command is refused by _check_run_args, in words
        if name != "train":
            cmd.add_argument("run", nargs="?", help=argparse.SUPPRESS)
    cmds["cache"].add_argument("--teacher", help="with --study, the study's teacher to cache (studies/q1: one of "
                               "q1.cached)")
    cmds["pilot"].add_argument("--study", help="the named study's params file (required), e.g. studies/q1/params.yaml")
    cmds["results"].add_argument("-o", "--out", default="reports/results_all.csv", help="the CSV to write (default "
                                 "reports/results_all.csv; the report stage writes reports/results.csv, the default "
                                 "study's runs)")
    cmds["sweep"].add_argument("--param", default="loss.alpha", help="the swept param (default loss.alpha)")
    cmds["sweep"].add_argument("--by", help="a second swept param (a grid): one curve per value, e.g. loss.temperature")
    cmds["ui"].add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    bench = cmds["bench"]
    bench.add_argument("--quick", action="store_true", help="one round of 2 steps (a smoke test)")
    bench.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3; the median counts)")
    bench.add_argument("--steps", type=int, help="timed steps per measurement (default 40)")
    bench.add_argument("--workers", type=int, help="DataLoader workers for the PIL rows (default: up to 2)")
    bench.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    ap.set_defaults(commands=cmds)
    return ap


def did_you_mean(word: str) -> str:
    """``kdlab WORD`` for a WORD that is no command: the message, with the closest commands."""
    import difflib

    close = difflib.get_close_matches(word, list(STAGES) + list(ALIASES), n=3, cutoff=0.6)
    named = list(dict.fromkeys(ALIASES.get(c, c) for c in close))
    hint = f"; did you mean {' or '.join(f'`kdlab {c}`' for c in named)}?" if named else ""
    return f"no command {word!r}{hint} (`kdlab --help` lists them all)"


def _parse(argv: list[str]) -> argparse.Namespace:
    """The command's own parser reads its arguments, so that an error shows that command's usage."""
    ap = _parser()
    if argv and argv[0] in STAGES:
        args = ap.get_default("commands")[argv[0]].parse_args(argv[1:])
        args.stage = argv[0]
    else:
        args = ap.parse_args(argv)
    for name in ("run", "study", "teacher"):  # the options only some commands have
        if not hasattr(args, name):
            setattr(args, name, None)
    return args


def study_runs(p, study: str | None) -> dict:
    """Every training run of the default study (``study`` None) or of the named study whose params file is
    ``study`` (its design's ``runs``), by name."""
    if study is None:
        from kdlab.pipeline.stages import runs
        return runs(p)
    from kdlab.analysis import studies

    design = studies.design(study)
    return design.runs(p, design.load(study))


def _check_train_args(p, args) -> str | None:
    runs = args.design.runs(p, args.q) if args.study else study_runs(p, None)
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


def _check_study_args(args) -> str | None:
    """What is wrong with a command's named study (``--study``, and cache's ``--teacher``), if anything; else its
    design and params go on ``args``."""
    if args.study is None:  # the default study's stage: nothing of the named studies is imported
        if args.stage in ("prune", "cka"):
            return f"{args.stage} is a named study's stage: kdlab {args.stage} --study studies/<name>/params.yaml"
        return "--teacher is a named study's (kdlab cache --study FILE --teacher T)" if args.teacher else None
    from kdlab.analysis import studies
    from kdlab.infra.schema import ParamsError

    args.study = str(studies.params_file(args.study))  # a study's name stands for its params file
    try:
        args.design = studies.design(args.study)
        args.q = args.design.load(args.study)
    except ParamsError as e:
        return str(e)
    if args.stage != "train" and args.stage not in args.design.STAGES:
        return f"{args.study} has no {args.stage} stage (its stages: train, {', '.join(args.design.STAGES)})"
    if args.stage == "cache":
        teachers = args.design.cache_teachers(args.q) if hasattr(args.design, "cache_teachers") else None
        if teachers is None and args.teacher:
            return f"{args.study} caches one teacher: no --teacher"
        if teachers is not None and args.teacher not in teachers:
            return f"--teacher {args.teacher!r} is not one of {args.study}'s cached teachers {teachers}"
    return None


def _check_run_args(p, args) -> str | None:
    """What is wrong with the command's arguments, if anything."""
    if (args.run is not None) != (args.stage == "train"):
        return "train takes one run (kdlab train RUN); no other command takes one"
    if args.stage in STUDY_COMMANDS:
        return _check_study_args(args) or (_check_train_args(p, args) if args.stage == "train" else None)
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
    from kdlab.infra.ui import serve

    return serve(port)


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
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and not argv[0].startswith("-") and argv[0] not in STAGES:
        print(f"kdlab: {did_you_mean(argv[0])}", file=sys.stderr)
        return 2
    args = _parse(argv)
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

        launch(p.train.nproc, argv)
    # SIGTERM (a scheduler, `kill`) ends a stage like Ctrl-C: the last complete epoch's checkpoint stays,
    # the MLflow run is closed as KILLED, and rerunning the stage resumes
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # a shell starts background jobs with SIGINT ignored, and Python then keeps it ignored: `kill -INT` (and a
    # test's SIGINT) would be lost on a stage run under `cmd &`, so the handler is installed explicitly
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if args.stage in ("evaluate", "report", "results"):  # they describe runs
            from kdlab.pipeline import recorded

            recorded.check(args.stage, args.params, args.overrides, study=args.study)
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
