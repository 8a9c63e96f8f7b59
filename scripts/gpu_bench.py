"""GPU throughput and a short real run, for a CUDA machine without network (issue: speed).

    PYTHONPATH=src python3 scripts/gpu_bench.py               # on the GPU machine, under 8 minutes
    PYTHONPATH=src python3 scripts/gpu_bench.py --smoke       # tiny sizes on the CPU: checks the script runs

Imports torch, torchvision, tqdm, PyYAML and kdlab (no dvc, mlflow or network: the GPU machine has these). Every
training step is kdlab's own :func:`kdlab.core.train.step` with kdlab's methods (raw, kd, kd_online), as training runs
it. Prints:
1. CIFAR-shaped data (50,000 uint8 images generated on the device): ResNet-50 teacher forward and ResNet-18
   student steps (raw, cached KD, online KD), eager and torch.compile'd (compile time apart), images/s,
   seconds per 50k-image epoch and the fraction of the GPU's peak dense bf16 FLOP/s;
2. a short real training run on the prepared Fashion-MNIST tensors (data/prepared, carried into the working
   tree), resnet20 teacher and resnet8 student, seconds per epoch and test accuracy;
3. the teachers' own training steps (ResNet-50, and each other architecture of ``--q1``'s teachers), compiled;
   the founding note's study (ResNet-50 teacher, every method, 3 seeds) and question 1 in depth at that setting
   (``--q1``, studies/q1/params.gpu.yaml: every teacher, cache and student of it) projected from the measured rates;
4. first, before this process touches CUDA: whether a child forked from it trains on the GPU, as kdlab's warm
   server (kdlab.warm) forks every stage from a process that imported torch and never used the device.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from kdlab import distill
from kdlab.core import models, views
from kdlab.core.loader import Batch, Normalize, TrainBatches
from kdlab.core.train import make_optimizer, make_schedule, step
from kdlab.pipeline.params import LossParams, TrainParams

#: peak dense bf16 tensor FLOP/s by device name fragment (vendor data sheets)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}


def peak_flops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def step_flops(model: torch.nn.Module, shape, device, train: bool) -> float:
    """FLOPs of one image through ``model`` (forward; x3 for a training step: forward + backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *shape, device=device))
    return counter.get_total_flops() * (3 if train else 1)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def method(name: str, student, teacher, example):
    """kdlab's method ``name`` (alpha 0.5, temperature 4, as the shipped params), attached to ``student``."""
    m = distill.build(name, SimpleNamespace(loss=LossParams(0.5, 4.0), methods={}, train=TrainParams()))
    m.attach(student, teacher if m.uses_teacher_model else None, example)
    return m.to(example.device)


def rate(one_step, batches, steps: int, batch_size: int, device, warmup: int = 3) -> tuple[float, float]:
    """(images/s over ``steps`` steps, seconds of the warm-up steps: compile time for compiled models)."""
    it = iter(batches)
    start = time.perf_counter()
    for _ in range(warmup):
        one_step(next(it))
    sync(device)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        one_step(next(it))
    sync(device)
    return steps * batch_size / (time.perf_counter() - start), warm


def cycle(batches_factory):
    epoch = 1
    while True:
        yield from batches_factory(epoch)
        epoch += 1


def warm_fork() -> dict:
    """kdlab.warm's children are forked from a server that imported torch and kdlab but never touched CUDA: fork
    one here, before this process does, and have it take kdlab raw steps on the device it finds."""
    import os

    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            student = models.build("resnet8", 3, 10).to(device).train()
            x = torch.randn(16, 3, 32, 32, device=device)
            batch = Batch(x, torch.randint(0, 10, (16,), device=device))
            m = method("raw", student, None, x[:8])
            opt = make_optimizer(student.parameters(), 0.05, TrainParams())
            for _ in range(3):
                step(lambda b: m(student, b), batch, opt, device=device,
                     precision="bf16" if device.type == "cuda" else "fp32")
            sync(device)
            print(f"warm fork: a forked child trained on {device}")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    ok = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    if not ok:
        print(f"warm fork: the forked child failed (status {status}); kdlab.warm is unsafe here: set KDLAB_WARM=0")
    return {"ok": ok, "seconds": time.perf_counter() - start}


def throughput(args, device) -> dict:
    n, bs = args.images, args.batch
    g = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device=device, generator=g)
    labels = torch.randint(0, 10, (n,), device=device, generator=g)
    cl = device.type == "cuda"
    norm = Normalize([0.49, 0.48, 0.45], [0.25, 0.24, 0.26], device, channels_last=cl)
    table = views.view_table(n, 4, True, args.views, 0)
    cached = torch.randn(n, table.shape[1], 10, device=device).half()  # the cache's layout; values do not matter
    batches = TrainBatches(images, labels, norm, bs, 4, table, seed=0, teacher_logits=cached)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    precision = "bf16" if device.type == "cuda" else "fp32"
    mf = torch.channels_last if cl else torch.contiguous_format
    teacher = models.build(args.teacher, 3, 10).to(device, memory_format=mf).eval().requires_grad_(False)
    out = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "images": n, "batch": bs}
    peak = peak_flops(out["device"]) if device.type == "cuda" else None

    @torch.no_grad()
    def teacher_step(b):
        with amp:
            teacher(b.images)

    r, _ = rate(teacher_step, cycle(batches.epoch), args.steps, bs, device)
    flops = step_flops(teacher, (3, 32, 32), device, train=False)
    out["teacher_forward"] = {"images_per_s": r, "mfu": r * flops / peak if peak else None}
    print(f"{args.teacher} forward: {r:,.0f} img/s" + (f", {100 * r * flops / peak:.1f}% of peak bf16" if peak else ""))
    out["train"] = {}
    for arch in dict.fromkeys([args.teacher, *args.extra_archs]):  # the teachers' own (labels-only) steps
        torch.manual_seed(0)
        model = models.build(arch, 3, 10).to(device, memory_format=mf)
        if arch != args.teacher:
            fwd = models.build(arch, 3, 10).to(device, memory_format=mf).eval().requires_grad_(False)

            @torch.no_grad()
            def forward_step(b, fwd=fwd):
                with amp:
                    fwd(b.images)

            r, _ = rate(forward_step, cycle(batches.epoch), args.steps, bs, device)
            out["forward_" + arch] = {"images_per_s": r}
            print(f"{arch} forward: {r:,.0f} img/s")
        model.train()
        m = method("raw", model, None, norm(images[:8]))
        forward = torch.compile(m, dynamic=False) if args.compile else m
        opt = make_optimizer(model.parameters(), 0.05, TrainParams())

        def train_step(b, forward=forward, model=model, opt=opt):
            step(lambda b: forward(model, b), b, opt, device=device, precision=precision)

        r, warm = rate(train_step, cycle(batches.epoch), args.steps, bs, device)
        out["train"][arch] = {"images_per_s": r, "compiled": args.compile, "warmup_seconds": warm}
        print(f"{arch} training step (labels, {'compiled' if args.compile else 'eager'}): {r:,.0f} img/s, "
              f"{50_000 / r:.2f} s per 50k epoch")
        del model, m, forward, opt
    student_flops = None
    for compiled in (False, True) if args.compile else (False,):
        for name in ("raw", "kd", "kd_online"):
            torch.manual_seed(0)
            student = models.build(args.student, 3, 10).to(device, memory_format=mf)
            student_flops = student_flops or step_flops(student, (3, 32, 32), device, train=True)
            student.train()
            m = method(name, student, teacher, norm(images[:8]))
            forward = torch.compile(m, dynamic=False) if compiled else m  # as kdlab.core.train.fit compiles
            opt = make_optimizer(student.parameters(), 0.05, TrainParams())

            def one_step(b, forward=forward, student=student, opt=opt):
                step(lambda b: forward(student, b), b, opt, device=device, precision=precision)

            r, warm = rate(one_step, cycle(batches.epoch), args.steps, bs, device)
            key = f"{name}{'_compiled' if compiled else ''}"
            mfu = r * student_flops / peak if peak else None
            out[key] = {"images_per_s": r, "epoch_seconds_50k": 50_000 / r, "warmup_seconds": warm, "mfu": mfu}
            print(f"{args.student} {key}: {r:,.0f} img/s, {50_000 / r:.2f} s per 50k epoch"
                  + (f", compile+warm-up {warm:.1f} s" if compiled else "")
                  + (f", {100 * mfu:.1f}% of peak bf16 (student step only)" if mfu else ""))
    return out


def real_run(args, device) -> dict | None:
    """resnet20 teacher then a KD resnet8 student on the prepared Fashion-MNIST tensors."""
    root = Path(args.prepared)
    if not (root / "train.pt").exists():
        print(f"no {root}/train.pt: skipping the real run (carry data/prepared into the working tree)")
        return None
    meta = json.loads((root / "meta.json").read_text())
    split = {k: torch.load(root / f"{k}.pt", weights_only=True) for k in ("train", "test")}
    norm = Normalize(meta["mean"], meta["std"], device)
    tr = split["train"]
    n = len(tr["labels"]) if not args.smoke else min(512, len(tr["labels"]))
    images, labels = tr["images"][:n].to(device), tr["labels"][:n].to(device)
    test_x, test_y = split["test"]["images"].to(device), split["test"]["labels"].to(device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    precision = "bf16" if device.type == "cuda" else "fp32"
    tp = TrainParams()  # SGD, momentum 0.9, nesterov, weight decay 5e-4, one-cycle with 20% warm-up
    out = {}

    def train(arch, width, epochs, teacher=None):
        torch.manual_seed(0)
        model = models.build(arch, meta["channels"], meta["classes"], width).to(device)
        table = views.view_table(n, 2, True, "all", 0)
        batches = TrainBatches(images, labels, norm, args.batch, 2, table, seed=0)
        m = method("kd_online" if teacher is not None else "raw", model, teacher, norm(images[:8]))
        opt = make_optimizer(model.parameters(), 0.2, tp)
        sched = make_schedule(opt, epochs * len(batches), tp)
        sync(device)
        start = time.perf_counter()
        for epoch in range(1, epochs + 1):
            model.train()
            for b in batches.epoch(epoch):
                step(lambda b: m(model, b), b, opt, sched, device=device, precision=precision)
        sync(device)
        seconds = time.perf_counter() - start
        model.eval()
        with torch.no_grad(), amp:
            pred = torch.cat([model(norm(test_x[i:i + 1000])).argmax(1) for i in range(0, len(test_y), 1000)])
        acc = (pred == test_y).float().mean().item()
        print(f"{arch} x{width} {'KD' if teacher is not None else 'labels'}: {epochs} epochs, "
              f"{seconds / epochs:.2f} s/epoch, test {100 * acc:.2f}%")
        return model, {"seconds_per_epoch": seconds / epochs, "test_acc": acc}

    teacher, out["teacher"] = train("resnet20", 1.0, args.epochs)
    teacher.eval().requires_grad_(False)
    _, out["student_kd_online"] = train("resnet8", 0.5, args.epochs, teacher)
    return out


def project(tp: dict) -> dict:
    """Minutes for the founding note's study on this GPU from the measured rates: teacher 30 epochs, a cache
    of every view (50 per image), students 30 epochs x (raw, kd, kd_correct_only) x 3 seeds."""
    teacher_train_s = 30 * 50_000 / next(iter(tp["train"].values()))["images_per_s"]  # measured: --teacher's step
    cache_s = 50 * 50_000 / tp["teacher_forward"]["images_per_s"]
    best = max((k for k in tp if k.startswith("kd") and isinstance(tp[k], dict) and "epoch_seconds_50k" in tp[k]
                and not k.startswith("kd_online")), key=lambda k: tp[k]["images_per_s"])
    students_s = 30 * 3 * 3 * tp[best]["epoch_seconds_50k"]
    total = (teacher_train_s + cache_s + students_s) / 60
    print(f"founding-note study projected: teacher {teacher_train_s / 60:.1f} min (its measured step), cache {cache_s / 60:.1f} min, 9 students {students_s / 60:.1f} min ({best}): "
          f"{total:.1f} min")
    return {"teacher_min": teacher_train_s / 60, "cache_min": cache_s / 60, "students_min": students_s / 60,
            "total_min": total, "student_rate_from": best}


def project_q1(tp: dict, preset: Path, args) -> dict | None:
    """Minutes for question 1 in depth at the GPU preset (studies/q1/params.gpu.yaml) from the measured rates:
    each teacher run (its architecture's training step), each cache (every view of every training image through
    that teacher), each student run (on the labels at the raw rate, kd_online at its own rate, the other KD
    methods at the best cached-KD rate), over seeds.
    Per-epoch validation and the test pass are left out (inference on 5k and 10k images)."""
    import yaml

    if not preset.exists():
        print(f"no {preset}: skipping question 1's projection")
        return None
    q = yaml.safe_load(preset.read_text())["q1"]
    n, seeds = q["train_images"], len(q["seeds"])
    v = yaml.safe_load(Path("params.yaml").read_text())["views"] if Path("params.yaml").exists() else {"pad": 2, "flip": True}
    n_views = views.num_views(v["pad"], v["flip"])  # the preset caches every view
    train = {a: r["images_per_s"] for a, r in tp["train"].items()}
    forward = {args.teacher: tp["teacher_forward"]["images_per_s"],
               **{k[len("forward_"):]: r["images_per_s"] for k, r in tp.items() if k.startswith("forward_")}}
    missing = {t["arch"] for t in q["teachers"].values()} - set(train)
    if missing:
        print(f"question 1's projection needs the training rate of {sorted(missing)}: pass --extra-archs")
        return None
    kd_rate = max(tp[k]["images_per_s"] for k in tp if k.startswith("kd") and not k.startswith("kd_online")
                  and isinstance(tp[k], dict) and "images_per_s" in tp[k])
    raw_rate = max(tp[k]["images_per_s"] for k in ("raw", "raw_compiled") if k in tp)
    teachers_s = sum(t["epochs"] * n / train[t["arch"]] for t in q["teachers"].values())

    def arch_of(name):  # a cached teacher's run (q1.cached maps each to it)
        return q["teachers"][q["cached"][name]]["arch"]

    caches_s = sum(n * n_views / forward.get(arch_of(t), forward[args.teacher]) for t in q["cached"])
    budgets, methods, controls = q["budgets"], q["methods"], q["controls"]
    raw_epochs = (1 + len(q.get("labels", []))) * sum(budgets)  # raw and the other methods on the labels alone
    online_epochs = sum(budgets) if "kd_online" in methods else 0
    kd_epochs = ((len(methods) - ("kd_online" in methods)) * sum(budgets)
                 + (len(q["quality"]) + len(controls)) * q["quality_epochs"])
    online_rate = tp["kd_online"]["images_per_s"] if "kd_online" in tp else kd_rate
    students_s = seeds * n * (raw_epochs / raw_rate + kd_epochs / kd_rate + online_epochs / online_rate)
    total = (teachers_s + caches_s + students_s) / 60
    print(f"question 1 in depth at {preset.name} projected: teachers {teachers_s / 60:.1f} min, caches "
          f"{caches_s / 60:.1f} min ({n_views} views), students {students_s / 60:.1f} min ({seeds} seeds x "
          f"{raw_epochs} label + {kd_epochs} cached-KD + {online_epochs} online-KD epochs of {n:,} images): "
          f"{total:.1f} min")
    return {"teachers_min": teachers_s / 60, "caches_min": caches_s / 60, "students_min": students_s / 60,
            "total_min": total, "student_epochs": seeds * (raw_epochs + kd_epochs + online_epochs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (CPU check of the script)")
    ap.add_argument("--teacher", default="resnet50")
    ap.add_argument("--student", default="resnet18")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--views", type=int, default=8, help="cached views per image for the kd rows")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=3, help="epochs of the real run")
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--prepared", default="data/prepared")
    ap.add_argument("--extra-archs", nargs="*", default=["resnet34"],
                    help="other teachers' architectures whose training step (and forward) is timed too")
    ap.add_argument("--q1", type=Path, default=Path("studies/q1/params.gpu.yaml"),
                    help="question 1's GPU preset to project (default studies/q1/params.gpu.yaml)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    args.images = 50_000
    if args.smoke:
        args.images, args.batch, args.steps, args.epochs = 64, 8, 2, 1
        args.teacher, args.student, args.extra_archs = "resnet8", "resnet8", ["resnet14"]
    start = time.perf_counter()
    result = {"warm_fork": warm_fork()}  # before this process uses the device
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    result["throughput"] = throughput(args, device)
    result["real_run"] = real_run(args, device)
    result["projection"] = project(result["throughput"])
    result["projection_q1"] = project_q1(result["throughput"], args.q1, args)
    result["seconds"] = time.perf_counter() - start
    print(f"total {result['seconds']:.0f} s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
