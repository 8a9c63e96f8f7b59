"""``kdlab bench``: training throughput of the same KD job done several ways, side by side, in one process.

Same student, teacher, batch size and data (the prepared training split, or random images of its shape):

1. ``raw``: kdlab's student step on labels alone;
2. ``kd``: kdlab's step with cached, view-consistent teacher logits;
3. ``kd_online``: kdlab's step with the teacher run at every step;
4. ``dataloader_pil``: the PyTorch KD tutorial's way, a torchvision ``DataLoader`` with per-image PIL
   transforms (random crop with padding, flip, ToTensor, Normalize) and the teacher online;
5. ``torchdistill`` (when installed: the ``bench`` extra): the same KD job run by torchdistill's
   ``DistillationBox``, timed as a whole process (:mod:`kdlab.pipeline.torchdistill_row`).

Rows are measured in interleaved rounds (the median is reported): this machine is shared and noisy, so the
ratios are the claims, not the absolute figures. Writes metrics/bench.json and metrics/bench.md.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kdlab import distill
from kdlab.core import data, models, views
from kdlab.core.loader import Batch, Normalize, TrainBatches
from kdlab.core.train import make_optimizer, step
from kdlab.distill.kd import kl_per_sample
from kdlab.infra import io, runtime
from kdlab.pipeline.params import Params
from kdlab.pipeline.workspace import BENCH_JSON, BENCH_MD, CHECKPOINTS, PREPARED

ROWS = {
    "raw": "kdlab, labels only",
    "kd": "kdlab, cached view-consistent logits",
    "kd_online": "kdlab, teacher online",
    "dataloader_pil": "DataLoader + PIL transforms, teacher online (PyTorch tutorial)",
    "torchdistill": "torchdistill DistillationBox + DataLoader + PIL, teacher online",
    "torchdistill_whole_process": "the same, timed as a whole process (start-up included)",
    "kd_bf16": "kdlab, cached logits, bf16 autocast",
    "kd_compiled": "kdlab, cached logits, torch.compile (compilation excluded)",
    "kd_bf16_compiled": "kdlab, cached logits, bf16 autocast and torch.compile",
}


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
           "python": platform.python_version()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    return out


def bench_data(p: Params, n: int) -> tuple[torch.Tensor, torch.Tensor, list, list]:
    """(uint8 images, labels, mean, std): the prepared training split's first n images, else random ones."""
    try:
        meta, splits = data.load_prepared(PREPARED, p.data)
        return splits["train"]["images"][:n], splits["train"]["labels"][:n], meta["mean"], meta["std"]
    except io.StageError:  # none prepared, or not for these params
        channels, size, _ = data.SHAPES.get(p.data.name, (p.data.synthetic.channels, p.data.synthetic.image_size, n))
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
        classes = p.data.synthetic.classes if p.data.name == "synthetic" else 100 if p.data.name == "cifar100" else 10
        return images, torch.randint(0, classes, (n,), generator=g), [0.5] * channels, [0.25] * channels


class Job:
    """Models and data of the benchmark: built once, re-initialised for every measurement."""

    def __init__(self, p: Params, n_images: int, device: torch.device):
        self.p, self.device = p, device
        self.images, self.labels, self.mean, self.std = bench_data(p, n_images)
        self.classes = max(int(self.labels.max()) + 1 if len(self.labels) else 2, 2)
        self.normalize = Normalize(self.mean, self.std, device)
        self.table = views.view_table(len(self.labels), p.views.pad, p.views.flip, p.cache.views, p.cache.seed)

    def model(self, spec) -> torch.nn.Module:
        torch.manual_seed(0)
        return models.build(spec.arch, self.images.shape[1], self.classes, spec.width).to(self.device)

    def teacher(self) -> torch.nn.Module:
        return self.model(self.p.teacher).eval().requires_grad_(False)


def time_kdlab(job: Job, name: str, steps: int, precision: str = "fp32", compiled: bool = False) -> tuple[float, float]:
    """(images/second, seconds of the warm-up steps) of kdlab's own step loop (the one :func:`kdlab.core.train.fit`
    runs) for the method ``name``; with ``compiled``, the warm-up includes torch.compile's compilation."""
    p = job.p
    method = distill.build(name, p)
    teacher = job.teacher() if method.uses_teacher_model else None
    logits = None
    if method.uses_teacher_logits:  # the cache's layout: (N, K, classes) fp16; any values time the same
        logits = torch.randn(*job.table.shape, job.classes).half()
    table = job.table
    if method.views == "all":
        table = views.view_table(len(job.labels), p.views.pad, p.views.flip, "all", 0)
    batches = TrainBatches(job.images, job.labels, job.normalize, p.train.batch_size, p.views.pad, table, seed=0,
                           teacher_logits=logits)
    student = job.model(p.student)
    method.attach(student, teacher, job.normalize(job.images[:8].to(job.device)))
    method.to(job.device)
    opt = make_optimizer([*student.parameters(), *method.parameters()], 0.05, p.train)
    step_forward = torch.compile(method, dynamic=False) if compiled else method  # as train.fit does
    return _timed_steps(batches.epoch(1), steps, lambda b: step_forward(student, b), opt, job.device,
                        p.train.batch_size, precision)


def _timed_steps(batches, steps: int, forward, opt, device, batch_size: int, precision: str = "fp32",
                 warmup: int = 3) -> tuple[float, float]:
    """(images/second over ``steps`` training steps (:func:`kdlab.core.train.step`, as training runs them) after
    ``warmup`` untimed ones, seconds of the warm-up)."""
    start = time.perf_counter()
    warm = 0.0
    done = 0
    for i, batch in enumerate(_cycle(batches)):
        if i == warmup:
            _sync(device)
            warm = time.perf_counter() - start
            start = time.perf_counter()
        if i == warmup + steps:
            break
        step(forward, batch, opt, device=device, precision=precision)
        if i >= warmup:
            done += batch_size
    _sync(device)
    return done / (time.perf_counter() - start), warm


def _cycle(iterable):
    items = []
    for x in iterable:
        items.append(x)
        yield x
    while True:  # fewer batches than steps (tiny data): go round again
        yield from items


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class PILDataset(torch.utils.data.Dataset):
    """The tutorial's per-image pipeline over the same uint8 images: PIL image, then torchvision transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images.numpy(), labels.numpy(), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        img = self.images[i]
        pil = Image.fromarray(img[0]) if img.shape[0] == 1 else Image.fromarray(img.transpose(1, 2, 0))
        return self.transform(pil), int(self.labels[i])


def time_dataloader_pil(job: Job, steps: int, workers: int) -> float:
    from torchvision import transforms as T

    p = job.p
    size = job.images.shape[-1]
    tf = [T.RandomCrop(size, padding=p.views.pad)] + ([T.RandomHorizontalFlip()] if p.views.flip else [])
    tf += [T.ToTensor(), T.Normalize(job.mean, job.std)]
    loader = torch.utils.data.DataLoader(PILDataset(job.images, job.labels, T.Compose(tf)),
                                         batch_size=p.train.batch_size, shuffle=True, num_workers=workers,
                                         persistent_workers=False)
    teacher, student = job.teacher(), job.model(p.student).train()
    opt = make_optimizer(student.parameters(), 0.05, p.train)
    alpha, temp = p.loss.alpha, p.loss.temperature

    def forward(batch):  # the tutorial's KD loss, on the tutorial's batches
        with torch.no_grad():
            t = teacher(batch.images)
        s = student(batch.images)
        return s, {"ce": (1 - alpha) * F.cross_entropy(s, batch.labels), "kd": alpha * kl_per_sample(s, t, temp).mean()}

    batches = (Batch(x.to(job.device), y.to(job.device)) for x, y in loader)
    return _timed_steps(batches, steps, forward, opt, job.device, p.train.batch_size)[0]


def time_torchdistill(job: Job, steps: int, workers: int) -> tuple[float, float] | None:
    """(steady-state images/second of torchdistill's loop, images/second of the whole process with its start-up)
    on the same job; None if torchdistill is not installed."""
    try:
        import torchdistill  # noqa: F401
    except ImportError:
        return None
    spec = {"teacher": [job.p.teacher.arch, job.p.teacher.width], "student": [job.p.student.arch, job.p.student.width],
            "batch_size": job.p.train.batch_size, "steps": steps, "workers": workers, "pad": job.p.views.pad,
            "flip": job.p.views.flip, "alpha": job.p.loss.alpha, "temperature": job.p.loss.temperature,
            "classes": job.classes, "mean": job.mean, "std": job.std, "device": str(job.device)}
    tmp = CHECKPOINTS / "bench_images.pt"
    n = (steps + 3) * job.p.train.batch_size
    io.save_torch({"images": job.images[:n], "labels": job.labels[:n]}, tmp)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "kdlab.pipeline.torchdistill_row", json.dumps(spec), str(tmp)],
                         capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])))
    elapsed = time.perf_counter() - start
    tmp.unlink(missing_ok=True)
    if out.returncode != 0:
        raise RuntimeError(f"torchdistill run failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    steady = json.loads(out.stdout.strip().splitlines()[-1])["steady_images_per_second"]
    return steady, (steps + 3) * job.p.train.batch_size / elapsed


def run_bench(p: Params, quick: bool = False, rounds: int = 3, steps: int | None = None,
              workers: int | None = None, with_compile: bool = True) -> dict:
    device = runtime.setup(p.train, 0)
    if quick:
        rounds, steps = 1, steps or 2
    steps = steps or 40
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    job = Job(p, (steps + 3) * p.train.batch_size, device)
    compile_seconds: list[float] = []

    def compiled_kd(precision: str):
        v, warm = time_kdlab(job, "kd", steps, precision=precision, compiled=True)
        compile_seconds.append(warm)
        return v

    # every row in fp32, eager, as the peers run: the same settings on every side; the last two rows show
    # what bf16 autocast and torch.compile change for kdlab's cached KD on this machine
    measure = {"raw": lambda: time_kdlab(job, "raw", steps)[0], "kd": lambda: time_kdlab(job, "kd", steps)[0],
               "kd_online": lambda: time_kdlab(job, "kd_online", steps)[0],
               "dataloader_pil": lambda: time_dataloader_pil(job, steps, workers),
               "torchdistill": lambda: time_torchdistill(job, steps, workers),
               "kd_bf16": lambda: time_kdlab(job, "kd", steps, precision="bf16")[0],
               "kd_compiled": lambda: compiled_kd("fp32"), "kd_bf16_compiled": lambda: compiled_kd("bf16")}
    skipped = {}
    if not with_compile:
        measure.pop("kd_compiled")
        measure.pop("kd_bf16_compiled")
    elif device.type == "cpu" and not runtime.bf16_cpu():
        # inductor's fp32 convolution backward crashes the process on such CPUs (see runtime.compile_enabled)
        measure.pop("kd_compiled")
        skipped["kd_compiled"] = "fp32 compiled steps crash on CPUs without bf16 units (torch 2.14.1)"
    rates: dict[str, list[float]] = {k: [] for k in [*measure, "torchdistill_whole_process"]}
    for r in range(rounds):
        for name, fn in measure.items():
            v = fn()
            if isinstance(v, tuple):
                v, whole = v
                rates["torchdistill_whole_process"].append(whole)
            if v is not None:
                rates[name].append(v)
            print(f"round {r + 1}/{rounds} {name}: " + ("not installed" if v is None else f"{v:.0f} img/s"),
                  flush=True)
    med = {k: statistics.median(v) for k, v in rates.items() if v}
    result = {
        "machine": machine(), "device": str(device), "student": f"{p.student.arch} x{p.student.width}",
        "teacher": f"{p.teacher.arch} x{p.teacher.width}", "batch_size": p.train.batch_size, "steps": steps,
        "rounds": rounds, "dataloader_workers": workers, "images_per_second": med, "all_rounds": rates,
        "compile_seconds": statistics.median(compile_seconds) if compile_seconds else None, "skipped": skipped,
        "ratios": {
            "kd_over_raw_time": med["raw"] / med["kd"],
            "kd_online_over_kd_time": med["kd"] / med["kd_online"],
            "kd_speedup_vs_dataloader_pil": med["kd"] / med["dataloader_pil"],
            **({"kd_speedup_vs_torchdistill": med["kd"] / med["torchdistill"]} if "torchdistill" in med else {}),
            **({"kd_bf16_speedup": med["kd_bf16"] / med["kd"]} if "kd_bf16" in med else {}),
            **({"kd_compiled_speedup": med["kd_compiled"] / med["kd"]} if "kd_compiled" in med else {}),
            **({"kd_bf16_compiled_speedup": med["kd_bf16_compiled"] / med["kd"]} if "kd_bf16_compiled" in med else {}),
        },
    }
    io.save_json(result, BENCH_JSON)
    table = markdown(result)
    io.save_text(table, BENCH_MD)
    print(table)
    return result


def markdown(r: dict) -> str:
    med = r["images_per_second"]
    m = r["machine"]
    lines = [
        f"Training throughput, {r['student']} student, {r['teacher']} teacher, batch {r['batch_size']}, "
        f"{r['steps']} steps, median of {r['rounds']} interleaved round(s) on {m['cpu']} ({m['cores']} cores, "
        f"{r['device']}, torch {m['torch']}); DataLoader rows use {r['dataloader_workers']} worker(s). "
        "Regenerate with `make bench`.",
        "",
        "| way | images/s | time per image vs kdlab kd |",
        "|---|---|---|",
    ]
    for k, label in ROWS.items():
        if k in r.get("skipped", {}):
            lines.append(f"| {label} | not measured: {r['skipped'][k]} | - |")
            continue
        if k.endswith("_compiled") and k not in med:
            continue
        if k in med:
            lines.append(f"| {label} | {med[k]:.0f} | {med['kd'] / med[k]:.2f}x |")
        else:
            lines.append(f"| {label} | not installed (`pip install -e '.[bench]'`) | - |")
    ra = r["ratios"]
    lines += ["", f"Cached KD costs {100 * (ra['kd_over_raw_time'] - 1):+.1f}% per step over raw; online KD takes "
              f"{ra['kd_online_over_kd_time']:.2f}x the time of cached KD. All rows but the last ones run fp32 "
              f"and eager, as the peers do."]
    if r.get("compile_seconds") is not None:
        lines[-1] += (f" The compiled rows' 3 warm-up steps (compilation included) took {r['compile_seconds']:.1f} s "
                      f"(median): inductor caches compiled graphs on disk, so only a graph's first compile is slow "
                      f"(see compile_seconds in each run's metrics).")
    return "\n".join(lines) + "\n"
