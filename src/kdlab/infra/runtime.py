"""Process set-up shared by every stage: allocator, threads, device, determinism."""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

import torch

from kdlab.infra import distributed
from kdlab.infra.schema import ParamsError

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
        raise ParamsError("train.device", "cuda was asked for but torch.cuda.is_available() is False; use auto or cpu")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def bf16_cpu() -> bool:
    """Whether this CPU has native bf16 matrix units (AMX or AVX512-BF16), where bf16 autocast is fast."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def precision(choice: str, device: torch.device) -> str:
    """``train.precision`` -> "bf16" or "fp32". auto: bf16 autocast on CUDA and on CPUs with bf16 matrix units
    (training steps 1.4-2.1x faster on this project's AMX CPU; see README, Speed), else fp32."""
    if choice == "auto":
        return "bf16" if device.type == "cuda" or bf16_cpu() else "fp32"
    return choice


def compile_enabled(choice, device: torch.device, precision: str = "bf16") -> bool:
    """``train.compile`` -> whether the training step runs through torch.compile. auto: on CUDA, and on the
    CPU for bf16 steps when a C++ compiler is there for inductor (students' steps 1.3x faster on the AMX CPU,
    see README, Speed). Not for fp32 CPU steps: in torch 2.14.1, inductor's fp32 convolution backward crashes
    the process (SIGSEGV or abort, channels_last strides of narrow layers) on CPUs without bf16 units, the very
    CPUs where auto precision is fp32 (seen on an AVX2 AMD EPYC)."""
    if choice != "auto":
        return bool(choice)
    import shutil

    if device.type == "cuda":
        return True
    return precision == "bf16" and shutil.which(os.environ.get("CXX", "g++")) is not None


def setup(train_params, seed: int) -> torch.device:
    """Allocator, threads and seed; under torchrun also joins the process group (this rank's device)."""
    tune_allocator()
    # inductor imports torch.utils.cpp_extension, which logs "No CUDA runtime is found, using CUDA_HOME=..." on
    # every CPU machine that has a CUDA toolkit: a warning about a GPU a CPU run never uses, printed into the
    # progress bars; errors from that module still show
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    if train_params.threads:
        torch.set_num_threads(train_params.threads)
    torch.manual_seed(seed)
    dev = distributed.init(device(train_params.device))
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dev
