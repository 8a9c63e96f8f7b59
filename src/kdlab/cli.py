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


#: each command's one-line help (``kdlab --help``) and its own options (``kdlab COMMAND --help``)
HELP = {
    "check": "validate all of params.yaml (every method's options, the architectures): the pipeline's first stage",
    "prepare": "prepare the data set into data/prepared (uint8 tensors, sha256-stamped)",
    "train": "train one teacher or student of a study, named by its model file under models/ without .pt",
    "cache": "the default study's logit cache: the teacher's logits for the cached views",
    "evaluate": "run every model of the default study on the test split (metrics/summary.json, runs.json)",
    "report": "the default study's report, headline metrics and reports/results.csv, from the metrics files",
    "q1_cache": "question 1 in depth (studies/q1): one teacher's logit cache",
    "q1_report": "question 1 in depth: its report, findings and headline metrics",
    "pilot": "a named study's recipe pilot (its pilot section; validation only)",
    **{f"q23_{s}": f"questions 2 and 3 (studies/q23): the {s} stage" for s in Q23_STAGES},
    "results": "every run of every study as one table: prints a summary, writes a CSV (accuracies in percent)",
    "sweep": "gather DVC experiments over a param into a table and a plot",
    "readme": "copy the pipeline's result blocks into README.md and docs/",
    "bench": "time the same KD step several ways (kdlab, DataLoader+PIL, torchdistill)",
    "ui": "the MLflow UI over the project's store, on 127.0.0.1",
}
#: words a user may try for a command, and the command that does it
ALIASES = {"student": "train", "teacher": "train", "baseline": "train", "fit": "train", "test": "evaluate",
           "eval": "evaluate", "validate": "check", "mlflow": "ui", "table": "results", "q1": "q1_report",
           "q23": "q23_report"}


def _study_option(ap: argparse.ArgumentParser, default: str | None) -> None:
    ap.add_argument("--study", default=None, help="the study's params file" + (
        f" (default {default})" if default else " (default: the default study, params.yaml)"))


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
    _study_option(cmds["train"], None)
    for name, cmd in cmds.items():  # a run given to another command is refused by _check_run_args, in words
        if name != "train":
            cmd.add_argument("run", nargs="?", help=argparse.SUPPRESS)
    cmds["q1_cache"].add_argument("--teacher", help="one of q1.cached")
    for name in ("q1_cache", "q1_report"):
        _study_option(cmds[name], "studies/q1/params.yaml")
    for s in Q23_STAGES:
        _study_option(cmds[f"q23_{s}"], "studies/q23/params.yaml")
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
        if args.stage in ("evaluate", "report", "results", "q1_report", "q23_report"):  # they describe runs
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
