"""Dataset registry -> uint8 tensors on disk, a seeded train/val split and checksums.

``kdlab prepare`` writes data/prepared/{train,val,test}.pt (uint8 images N x C x H x W, int64 labels)
and meta.json (shapes, class count, per-channel mean/std of the training split, sha256 of each file).
Later stages load through :func:`load_prepared`, which verifies the checksums.
"""
from __future__ import annotations

import gzip
import math
import os
import socket
import urllib.error
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from kdlab.infra import io

if TYPE_CHECKING:  # imported where used, so params validation needs no torch
    import numpy as np
    import torch

FASHION_MNIST_DEB_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_DEB = "dataset-fashion-mnist"  # the Debian package that installs it there
SPLITS = ("train", "val", "test")


class DataError(io.StageError):
    """Prepared data missing, corrupt, or not what params.data asks for; or a download that failed."""


@dataclass
class Raw:
    train_images: torch.Tensor  # uint8 (N, C, H, W)
    train_labels: torch.Tensor  # int64 (N,)
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: int


DATASETS: dict[str, Callable] = {}
#: (channels, image size, training images) of the fixed datasets, for params validation
SHAPES = {"fashion_mnist": (1, 28, 60000), "cifar10": (3, 32, 50000), "cifar100": (3, 32, 50000)}
CLASSES = {"fashion_mnist": 10, "cifar10": 10, "cifar100": 100}


def register(name: str):
    def deco(fn):
        DATASETS[name] = fn
        return fn
    return deco


def _read_idx(path: Path) -> np.ndarray:
    """An MNIST-format idx file (optionally gzipped) -> numpy array."""
    import numpy as np

    fix = f"reinstall it (apt-get install --reinstall {FASHION_MNIST_DEB}) and rerun `kdlab prepare`"
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, OSError, zlib.error) as e:  # a cut gzip stream, a bad CRC or header, an unreadable file
        raise DataError(f"{path} cannot be read ({type(e).__name__}: {io.first_line(e)}): a truncated or corrupt "
                        f"copy; {fix}") from None
    if len(data) < 4 or data[:3] != b"\0\0\x08":
        raise DataError(f"{path} is not an idx file of bytes (its first 4 bytes are {data[:4].hex()}); {fix}")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    need = 4 + 4 * ndim + math.prod(dims)
    if len(data) != need:
        raise DataError(f"{path} holds {len(data)} bytes where its header ({' x '.join(map(str, dims))}) needs "
                        f"{need}: a truncated or corrupt copy; {fix}")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def check_raw(raw: Raw, source: str) -> None:
    """One image per label in each split, every label a class: refused here, in one line naming ``source``,
    rather than as an IndexError in the first stage that trains (or a split size blamed on data.val_size)."""
    for split, images, labels in (("training", raw.train_images, raw.train_labels),
                                  ("test", raw.test_images, raw.test_labels)):
        if len(images) != len(labels):
            raise DataError(f"{source}: the {split} split has {len(images)} images but {len(labels)} labels")
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < raw.classes:
            raise DataError(f"{source}: the {split} split's labels run from {int(labels.min())} to "
                            f"{int(labels.max())}, outside the {raw.classes} classes 0-{raw.classes - 1}")


#: seconds a download may wait for the network before it gives up (KDLAB_DOWNLOAD_TIMEOUT overrides)
DOWNLOAD_TIMEOUT = 60.0


def _timeout() -> float:
    return float(os.environ.get("KDLAB_DOWNLOAD_TIMEOUT", DOWNLOAD_TIMEOUT))


@contextmanager
def _download_timeout():
    """torchvision's downloads (urllib) wait forever on a stalled connection (a proxy that accepts and never
    answers); a socket timeout turns that into an error, reported by :func:`_network_error`."""
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_timeout())
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


def _network_error(name: str, root: Path, files: str, err: Exception) -> DataError:
    return DataError(
        f"could not download {name} into {root} ({type(err).__name__}: {err}). This machine seems to have no "
        f"network, or it stalled (no answer within KDLAB_DOWNLOAD_TIMEOUT={_timeout()} s). Copy {files} "
        f"into {root}/ on a machine with one and rerun `kdlab prepare` (torchvision "
        f"checks the files' MD5 and skips the download), or use data.name=fashion_mnist, which is read from "
        f"the Debian package dataset-fashion-mnist ({FASHION_MNIST_DEB_DIR}).")


@register("fashion_mnist")
def fashion_mnist(p) -> Raw:
    import torch

    d = FASHION_MNIST_DEB_DIR
    if (d / "train-images-idx3-ubyte.gz").exists():
        arrays = [_read_idx(d / f"{s}-{kind}-ubyte.gz")
                  for s in ("train", "t10k") for kind in ("images-idx3", "labels-idx1")]
        tr_x, tr_y, te_x, te_y = (torch.from_numpy(a.copy()) for a in arrays)
        return Raw(tr_x[:, None], tr_y.long(), te_x[:, None], te_y.long(), 10)
    from torchvision.datasets import FashionMNIST

    root = Path(p.root)
    try:
        with _download_timeout():
            tr, te = [FashionMNIST(root, train=t, download=True) for t in (True, False)]
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise _network_error("Fashion-MNIST", root, "the four *-ubyte.gz files into FashionMNIST/raw", e) from None
    return Raw(tr.data[:, None].clone(), tr.targets.long(), te.data[:, None].clone(), te.targets.long(), 10)


def _cifar(cls, name: str, archive: str, p) -> Raw:
    import numpy as np
    import torch

    root = Path(p.root)
    try:
        with _download_timeout():
            tr, te = [cls(root, train=t, download=True) for t in (True, False)]
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise _network_error(name, root, archive, e) from None
    to_t = lambda ds: torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    return Raw(to_t(tr), torch.tensor(tr.targets), to_t(te), torch.tensor(te.targets), len(tr.classes))


@register("cifar10")
def cifar10(p) -> Raw:
    from torchvision.datasets import CIFAR10
    return _cifar(CIFAR10, "CIFAR-10", "cifar-10-python.tar.gz", p)


@register("cifar100")
def cifar100(p) -> Raw:
    from torchvision.datasets import CIFAR100
    return _cifar(CIFAR100, "CIFAR-100", "cifar-100-python.tar.gz", p)


@register("synthetic")
def synthetic(p) -> Raw:
    """Tiny, learnable, deterministic data for tests: class templates plus noise."""
    import torch

    s = p.synthetic
    g = torch.Generator().manual_seed(1234)
    templates = torch.rand(s.classes, s.channels, s.image_size, s.image_size, generator=g) * 255

    def make(n):
        y = torch.randint(0, s.classes, (n,), generator=g)
        x = templates[y] * 0.6 + torch.rand(n, s.channels, s.image_size, s.image_size, generator=g) * 255 * 0.4
        return x.round().clamp(0, 255).to(torch.uint8), y

    (a, b), (c, d) = make(s.n_train), make(s.n_test)
    return Raw(a, b, c, d, s.classes)


def prepare(p, out: Path) -> dict:
    """Build the prepared tensors for ``p`` (params.data) in ``out`` and return meta.json's content."""
    import torch

    raw = DATASETS[p.name](p)
    source = (f"{p.name} ({FASHION_MNIST_DEB_DIR})" if p.name == "fashion_mnist"
              and (FASHION_MNIST_DEB_DIR / "train-images-idx3-ubyte.gz").exists() else p.name)
    check_raw(raw, source)
    n = len(raw.train_labels)
    val_size = split_sizes(p)["val"]
    if val_size >= n:
        raise DataError(f"data.val_size={p.val_size} leaves no training images (the training set has {n})")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(p.split_seed))
    val_idx, train_idx = perm[:val_size].sort().values, perm[val_size:].sort().values
    splits = {
        "train": (raw.train_images[train_idx], raw.train_labels[train_idx]),
        "val": (raw.train_images[val_idx], raw.train_labels[val_idx]),
        "test": (raw.test_images, raw.test_labels),
    }
    x = splits["train"][0].float() / 255
    meta = {
        "dataset": p.name,
        "classes": raw.classes,
        "channels": int(x.shape[1]),
        "image_size": int(x.shape[2]),
        "mean": x.mean(dim=(0, 2, 3)).tolist(),
        "std": x.std(dim=(0, 2, 3)).tolist(),
        "sizes": {k: len(v[1]) for k, v in splits.items()},
        "sha256": {},
    }
    for name, (images, labels) in splits.items():
        path = out / f"{name}.pt"
        io.save_torch({"images": images.contiguous(), "labels": labels.long()}, path)
        meta["sha256"][name] = io.sha256(path)
    io.save_json(meta, out / "meta.json")
    return meta


def split_sizes(d) -> dict[str, int]:
    """Images in the train and val splits (and test, for synthetic data) that :func:`prepare` makes from ``d``:
    synthetic data keep at most a fifth of their training images for validation."""
    if d.name == "synthetic":
        s = d.synthetic
        val = min(d.val_size, s.n_train // 5)
        return {"train": s.n_train - val, "val": val, "test": s.n_test}
    return {"train": SHAPES[d.name][2] - d.val_size, "val": d.val_size}


def expected_meta(d) -> dict:
    """What meta.json must say for the prepared data to be ``d``'s (the split seed is not recorded there)."""
    s = d.synthetic
    channels, size, _ = SHAPES.get(d.name, (s.channels, s.image_size, s.n_train))
    return {"dataset": d.name, "classes": CLASSES.get(d.name, s.classes), "channels": channels, "image_size": size,
            "sizes": split_sizes(d)}


def load_prepared(root: Path, expected=None, splits=SPLITS) -> tuple[dict, dict[str, dict]]:
    """(meta, {split: {"images", "labels"}}) from ``root``, each file verified against meta.json's checksum; with
    ``expected`` (params.data), data prepared from other data params are refused."""
    hint = "dvc repro prepare"
    meta_path = Path(root) / "meta.json"
    meta = io.load_json(meta_path, hint)
    if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), dict):
        raise DataError(f"{meta_path} is not a kdlab meta.json (no sha256 table); rebuild it with `{hint}`")
    if expected is not None:
        want = expected_meta(expected)
        got = {k: meta.get(k) if k != "sizes" else {s: (meta.get(k) or {}).get(s) for s in v} for k, v in want.items()}
        if got != want:
            diff = ", ".join(f"{k} {got[k]} (params.data: {want[k]})" for k in want if got[k] != want[k])
            raise DataError(f"{Path(root)} was prepared from other data params: {diff}; rebuild it with "
                            f"`dvc repro prepare`")
    out = {}
    for s in splits:
        path = Path(root) / f"{s}.pt"
        if path.exists() and io.sha256(path) != meta["sha256"].get(s):
            raise DataError(f"{path} does not match the checksum in {meta_path}: it is corrupted or was "
                            f"changed by hand; rebuild it with `dvc repro -f prepare`")
        out[s] = io.load_torch(path, hint)
    return meta, out
