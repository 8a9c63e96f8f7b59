"""Process set-up shared by every stage: allocator, threads, device, determinism."""
from __future__ import annotations

import ctypes
import ctypes.util
import os

import torch

# glibc's default allocator returns large tensor buffers to the OS after each step and page-faults them
# back in on the next: 25-45% of CPU training time here. These are the values of the environment
# variables MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=134217728, applied through mallopt so
# every stage gets them however it is started (dvc, a shell, a test); results are bit-identical.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 128 * 1024 * 1024


def tune_allocator() -> bool:
    """Apply the thresholds unless the user set the variables themselves (or KDLAB_MALLOPT=0, for
    comparisons); True if glibc accepted them."""
    if os.environ.get("KDLAB_MALLOPT") == "0":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False


def device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device: cuda was asked for but torch.cuda.is_available() is False; use auto or cpu")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def setup(train_params, seed: int) -> torch.device:
    tune_allocator()
    if train_params.threads:
        torch.set_num_threads(train_params.threads)
    torch.manual_seed(seed)
    dev = device(train_params.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dev
