"""scripts/tiny_outputs.py's fingerprints: blind to timings and input stamps, not to anything else."""
import json
import sys

import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import tiny_outputs  # noqa: E402


def test_a_fingerprint_ignores_timings_and_stamps_and_sees_weights_and_metrics(tmp_path):
    def model(w, seconds, stamp):
        path = tmp_path / f"m{len(list(tmp_path.iterdir()))}.pt"
        torch.save({"state_dict": {"w": w, "n": torch.tensor(3)}, "teacher_sha256": stamp,
                    "history": [{"epoch": 1, "val_acc": 0.5, "seconds": seconds}]}, path)
        return tiny_outputs.fingerprint(path)

    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    base = model(w, 1.0, "a")
    assert model(w.clone(), 2.5, "b") == base
    assert model(w.to(torch.bfloat16), 1.0, "a") != base
    w2 = w.clone()
    w2[1, 2] = torch.nextafter(w2[1, 2], torch.tensor(100.0))  # one float one ulp off
    assert model(w2, 1.0, "a") != base

    def metrics(**kv):
        path = tmp_path / f"j{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps(kv))
        return tiny_outputs.fingerprint(path)

    first = metrics(test_acc=0.9, train_seconds=3.0, images_per_second=100.0)
    assert metrics(test_acc=0.9, train_seconds=9.0, images_per_second=50.0) == first
    assert metrics(test_acc=0.91, train_seconds=3.0, images_per_second=100.0) != first
    assert tiny_outputs.compare({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "4"}) == [
        "b: differs", "c: missing in the first"]
