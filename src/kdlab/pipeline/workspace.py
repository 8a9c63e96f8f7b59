"""The study on disk: where every output lives, the process's context (device, data, normalisation), and
models built and loaded (carved and pruned ones rebuilt to their shape). Every file is read as tensors and
plain data (no pickle): see :func:`kdlab.infra.io.load_torch`.

Paths are relative to the repository root, where DVC runs every stage.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from kdlab.core import data, models
from kdlab.core.loader import Normalize
from kdlab.infra import io, runtime
from kdlab.pipeline.spec import Source, Subset

# ---------------------------------------------------------------- every output of the study

#: written by `kdlab check` once all of params.yaml passed (see kdlab.pipeline.check)
CHECKED = Path("data/checked.json")
#: the prepared uint8 tensors and meta.json (kdlab.core.data)
PREPARED = Path("data/prepared")
#: the teacher's logits for the cached views (kdlab.pipeline.cache)
CACHE = Path("data/teacher_logits")
#: chunks of an interrupted cache stage (not a DVC output, so DVC leaves it alone); removed when done
CACHE_PARTIAL = Path("data/teacher_logits.partial")
TEACHER = Path("models/teacher.pt")
STUDENTS = Path("models/students")
#: per-epoch training state of interrupted runs; deleted once a run's outputs are written
CHECKPOINTS = Path("checkpoints")
METRICS = Path("metrics")
#: question 1 (kdlab.analysis.evaluate)
SUMMARY_JSON = METRICS / "summary.json"
RUNS_JSON = METRICS / "runs.json"
SUMMARY_MD = METRICS / "summary.md"
PREDICTIONS = Path("predictions")
CURVES = Path("plots/curves")
ACCURACY_PLOT = Path("plots/accuracy.json")
#: every student's validation curve in one table (kdlab.analysis.report), for `dvc plots`
CURVES_PLOT = Path("plots/learning_curves.json")
#: kdlab.analysis.report and kdlab.analysis.sweep
REPORTS = Path("reports")
#: the only DVC metrics file: each question's headline numbers (kdlab.analysis.report); the files above are plain outputs
HEADLINE_JSON = METRICS / "headline.json"
#: the README's opening, worded from the headline numbers (kdlab.analysis.report; kdlab readme copies it)
FINDINGS_MD = REPORTS / "findings.md"
#: the founding note's table with paired, Holm-adjusted comparisons (the report stage; docs/study-default.md's block)
TABLE_MD = REPORTS / "table.md"
#: kdlab.pipeline.bench
BENCH_JSON = METRICS / "bench.json"
BENCH_MD = METRICS / "bench.md"


def run_files(name: str, seed: int) -> tuple[Path, Path]:
    """(model, metrics) files of the default study's student ``name-seed``."""
    return STUDENTS / f"{name}-{seed}.pt", METRICS / "students" / f"{name}-{seed}.json"


# ---------------------------------------------------------------- the process's context

@dataclass
class Context:
    device: torch.device
    meta: dict
    splits: dict
    normalize: Normalize
    #: train.precision resolved for this device: "bf16" or "fp32"
    precision: str = "fp32"


def subset_indices(n_total: int, n: int, seed: int) -> torch.Tensor:
    """The first ``n`` of a seeded permutation of ``range(n_total)``, in ascending order."""
    if n > n_total:
        raise io.StageError(f"the study asks for {n} images of a split of {n_total}: lower its train_images or "
                            f"val_images")
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=g)[:n].sort().values


def context(p, seed: int, subset: Subset | None = None) -> Context:
    """Threads, seed and device set up (:func:`kdlab.infra.runtime.setup`), the prepared data of ``p.data`` loaded
    (the training and validation splits cut to ``subset``)."""
    dev = runtime.setup(p.train, seed)
    meta, splits = data.load_prepared(PREPARED, p.data)
    if subset is not None:
        for split, n, offset in (("train", subset.train_images, 0), ("val", subset.val_images, 1)):
            s = splits[split]
            idx = subset_indices(len(s["labels"]), n, subset.seed + offset)
            splits[split] = {k: v[idx] for k, v in s.items()}
    return Context(dev, meta, splits, Normalize(meta["mean"], meta["std"], dev, channels_last=dev.type == "cuda"),
                   runtime.precision(p.train.precision, dev))


# ---------------------------------------------------------------- models

def memory_format(model: torch.nn.Module, spec, ctx: Context) -> torch.nn.Module:
    """``spec.channels_last`` applied; never for fp32 steps on the CPU, where oneDNN's fp32 convolution backward
    (torch 2.14.1) corrupts the heap on channels_last tensors (an abort, "corrupted size vs. prev_size", seen on
    an AVX2 AMD EPYC; the CPUs where precision auto is fp32). bf16 steps, as on the AMX CPU, keep it."""
    channels_last = ctx.device.type == "cuda" if spec.channels_last == "auto" else spec.channels_last
    channels_last = channels_last and not (ctx.device.type == "cpu" and ctx.precision == "fp32")
    # convolutions follow the weights' memory format, so the inputs can stay as they are
    return model.to(memory_format=torch.channels_last) if channels_last else model


def build_model(spec, ctx: Context) -> torch.nn.Module:
    """A fresh ``spec.arch`` x ``spec.width`` model (initialised from torch's seeded generator) on the device."""
    model = models.build(spec.arch, ctx.meta["channels"], ctx.meta["classes"], spec.width).to(ctx.device)
    return memory_format(model, spec, ctx)


def model_from_checkpoint(ckpt: dict, ctx: Context) -> torch.nn.Module:
    """The saved model: one carved from the teacher (``blocks`` in the file) is carved again and one pruned from
    it (``pruning``: torch-pruning's history) is pruned again to the same shape, then its weights are loaded."""
    model = models.build(ckpt["arch"], ckpt["in_channels"], ckpt["classes"], ckpt["width"])
    # carving and pruning code is imported only to rebuild such a model: the stages that never load one (the
    # teacher, the students) do not run it, so dvc.yaml need not re-run them when it changes
    if ckpt.get("blocks"):
        from kdlab.core.surgery import keep_blocks

        model = keep_blocks(model, ckpt["blocks"])
    if ckpt.get("pruning"):
        from kdlab.core import channels

        size = ctx.meta["image_size"]
        channels.replay(model, ckpt["pruning"], torch.zeros(2, ckpt["in_channels"], size, size))
    model.load_state_dict(ckpt["state_dict"])
    return model.to(ctx.device).eval()


def load_model(path: Path, ctx: Context, rebuild: str) -> torch.nn.Module:
    """The model saved at ``path``; ``rebuild``: the command that writes it, for the error message."""
    return model_from_checkpoint(io.load_torch(path, rebuild), ctx)


def check_trained(ckpt: dict, path: Path, spec, ctx: Context, rebuild: str) -> None:
    """A saved model must be the architecture ``spec`` names, trained on the prepared data in use."""
    got = {"arch": ckpt.get("arch"), "width": ckpt.get("width"), "data": ckpt.get("data_sha256")}
    want = {"arch": spec.arch, "width": spec.width, "data": ctx.meta["sha256"]}
    if got != want:
        diff = ", ".join(f"{k} {got[k]} (now {want[k]})" for k in want if got[k] != want[k] and k != "data")
        if got["data"] != want["data"]:
            diff += (", " if diff else "") + "other prepared data"
        raise io.StageError(f"{path} was trained with {diff}; rebuild it with `{rebuild}`")


def load_checked(source: Source, expected, ctx: Context) -> tuple[dict, torch.nn.Module]:
    """(checkpoint, model) of the model file ``source``, refused unless it was trained as ``expected`` (anything
    with ``arch`` and ``width``; None: any architecture) on the prepared data in use."""
    ckpt = io.load_torch(source.path, source.rebuild)
    if expected is not None:
        check_trained(ckpt, source.path, expected, ctx, source.rebuild)
    return ckpt, model_from_checkpoint(ckpt, ctx)


def load_teacher(p, ctx: Context) -> tuple[dict, torch.nn.Module]:
    """(checkpoint, model) of models/teacher.pt, refused unless it was trained as params.teacher asks, on the
    prepared data in use."""
    return load_checked(TEACHER_FILE, p.teacher, ctx)


# ---------------------------------------------------------------- inputs

#: the default study's teacher and logit cache (kdlab.pipeline.cache)
TEACHER_FILE = Source(TEACHER, "dvc repro teacher")
CACHE_FILE = Source(CACHE / "train.pt", "dvc repro cache")


def cache_stamp(p, subset: Subset | None) -> dict:
    """What a cache must have been built with: the views (and a named study's subset size)."""
    out = {"pad": p.views.pad, "flip": p.views.flip, "views": p.cache.views, "seed": p.cache.seed}
    return out if subset is None else {**out, "images": subset.train_images}


def read_cache(p, path: Path, rebuild: str, teacher: Path | None = None,
               subset: Subset | None = None) -> dict:
    """The cache at ``path``, refused unless it was built with the views (and subset) in use and, while the
    teacher file ``teacher`` is there, from that very file; ``rebuild``: the command that rebuilds it."""
    c = io.load_torch(path, rebuild)
    expected = cache_stamp(p, subset)
    got = {k: c.get(k) for k in expected}
    if got != expected:
        raise io.StageError(f"{path} was built with {got} but params ask for {expected}; rebuild it with `{rebuild}`")
    if teacher is not None and teacher.exists() and c.get("teacher_sha256") != io.sha256(teacher):
        raise io.StageError(f"{path} was not built from the current {teacher} (its sha256 differs: the teacher was "
                            f"retrained, replaced or damaged); rebuild it with `{rebuild}`")
    if c["logits"].shape[:2] != c["view_ids"].shape:
        raise io.StageError(f"{path} is inconsistent (logits {tuple(c['logits'].shape)}, view ids "
                            f"{tuple(c['view_ids'].shape)}); rebuild it with `{rebuild}`")
    return c
