"""``kdlab <stage>``: loads and validates params.yaml, then calls the stage."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

STAGES = ("prepare", "teacher", "cache", "student", "evaluate", "readme", "ui")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="kdlab",
        description="kdlab pipeline stages (normally run by `dvc repro`; see dvc.yaml).",
    )
    ap.add_argument("stage", choices=STAGES, help="the stage to run; `readme` copies metrics/summary.md into "
                    "README.md's results block; `ui` starts the MLflow UI on the project's store")
    ap.add_argument("--variant", help="student stage: the distillation variant (study.variants in params.yaml)")
    ap.add_argument("--seed", type=int, help="student stage: the seed (one of study.seeds)")
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a param, e.g. -S loss.alpha=0.7 (repeatable)")
    ap.add_argument("--port", type=int, default=5000, help="ui: port on 127.0.0.1 (default 5000)")
    return ap


def ui(port: int) -> int:
    from kdlab import tracking

    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", tracking.tracking_uri(),
           "--default-artifact-root", (tracking.root() / "mlartifacts").as_uri()]
    print(f"MLflow UI on http://127.0.0.1:{port} over {tracking.tracking_uri()}")
    return subprocess.call(cmd, env=env)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.stage == "ui":
        return ui(args.port)
    if args.stage == "readme":
        from kdlab.evaluate import run_readme
        run_readme()
        return 0
    from kdlab import params as params_mod

    try:
        p = params_mod.load(args.params, args.overrides)
    except params_mod.ParamsError as e:
        print(f"kdlab: {e}", file=sys.stderr)
        return 2
    if args.stage == "student":
        if args.variant != params_mod.BASELINE and args.variant not in p.study.variants:
            print(f"kdlab: --variant {args.variant!r} is neither {params_mod.BASELINE!r} nor in study.variants "
                  f"{p.study.variants}", file=sys.stderr)
            return 2
        if args.seed not in p.study.seeds:
            print(f"kdlab: --seed {args.seed!r} is not in study.seeds {p.study.seeds}", file=sys.stderr)
            return 2
    if args.stage == "prepare":
        from kdlab.data import DataError, prepare
        try:
            meta = prepare(p.data)
        except DataError as e:
            print(f"kdlab prepare: {e}", file=sys.stderr)
            return 1
        print(f"prepared {p.data.name}: {meta['sizes']} images of {meta['channels']}x{meta['image_size']}^2, "
              f"{meta['classes']} classes")
    elif args.stage == "teacher":
        from kdlab.stages import run_teacher
        run_teacher(p)
    elif args.stage == "cache":
        from kdlab.cache import run_cache
        run_cache(p)
    elif args.stage == "student":
        from kdlab.stages import run_student
        run_student(p, args.variant, args.seed)
    elif args.stage == "evaluate":
        from kdlab.evaluate import run_evaluate
        run_evaluate(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
