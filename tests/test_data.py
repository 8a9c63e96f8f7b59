import gzip
import io as pyio
import pickle
import tarfile
import urllib.error

import numpy as np
import pytest
import torch

from kdlab.core import data
from kdlab.pipeline import params, workspace


def test_synthetic_prepare_and_checksums(in_tmp):
    p = params.from_dict({"data": {"name": "synthetic", "val_size": 100}})
    meta = data.prepare(p.data, workspace.PREPARED)
    assert meta["sizes"] == {"train": 500, "val": 100, "test": 200}
    loaded_meta, splits = data.load_prepared(workspace.PREPARED)
    assert loaded_meta == meta
    assert splits["train"]["images"].dtype == torch.uint8
    assert splits["train"]["images"].shape == (500, 1, 12, 12)
    # the split is a seeded function of the params
    again = data.prepare(p.data, in_tmp / "again")
    assert again["sha256"] == meta["sha256"]


def test_corrupted_prepared_file_is_detected(in_tmp):
    data.prepare(params.from_dict({"data": {"name": "synthetic"}}).data, workspace.PREPARED)
    path = in_tmp / "data/prepared/val.pt"
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(data.DataError, match="val.pt.*dvc repro -f prepare"):
        data.load_prepared(workspace.PREPARED)


def test_read_idx_roundtrip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    f = tmp_path / "x-idx3-ubyte.gz"
    f.write_bytes(gzip.compress(header + arr.tobytes()))
    assert np.array_equal(data._read_idx(f), arr)


def _cifar_fixture(tmp_path, n=6):
    """A tiny archive in CIFAR-10's python format."""
    rng = np.random.default_rng(0)
    tar_path = tmp_path / "fixture.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for name in names + ["batches.meta"]:
            if name == "batches.meta":
                obj = {"label_names": [f"c{i}" for i in range(10)]}
            else:
                obj = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(range(n))}
            buf = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(buf)
            tar.addfile(info, pyio.BytesIO(buf))
    return tar_path


def test_cifar10_through_torchvision_download_path(in_tmp, monkeypatch):
    """The real torchvision CIFAR10 code path, with its download served from a local fixture."""
    import torchvision.datasets.cifar as tv_cifar

    fixture = _cifar_fixture(in_tmp)
    calls = []

    def fake_download(url, download_root, filename=None, md5=None, **kw):
        calls.append(url)
        with tarfile.open(fixture) as tar:
            tar.extractall(download_root)

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", fake_download)
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: (in_tmp / "data/raw/cifar-10-batches-py/test_batch").exists())
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    p = params.from_dict({"data": {"name": "cifar10", "val_size": 6}})
    meta = data.prepare(p.data, workspace.PREPARED)
    assert calls and "cifar-10-python.tar.gz" in calls[0]
    assert meta["classes"] == 10 and meta["channels"] == 3 and meta["image_size"] == 32
    assert meta["sizes"] == {"train": 24, "val": 6, "test": 6}


def test_cifar_without_network_says_so(in_tmp, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    def no_network(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", no_network)
    with pytest.raises(data.DataError) as e:
        data.prepare(params.from_dict({"data": {"name": "cifar100"}}).data, workspace.PREPARED)
    msg = str(e.value)
    assert "CIFAR-100" in msg and "no network" in msg and "cifar-100-python.tar.gz" in msg


@pytest.mark.skipif(not (data.FASHION_MNIST_DEB_DIR / "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package():
    raw = data.fashion_mnist(params.from_dict({}).data)
    assert raw.train_images.shape == (60000, 1, 28, 28) and raw.test_images.shape == (10000, 1, 28, 28)
    assert raw.train_labels.max() == 9 and raw.classes == 10
