"""The bench's torchdistill row: the same KD job (kdlab's models, batch, data, loss weights) run by
torchdistill's DistillationBox with its usual torchvision DataLoader and PIL transforms.

    python -m kdlab.pipeline.torchdistill_row SPEC_JSON IMAGES_PT     (called by `kdlab bench`; needs the bench extra)

Prints one JSON line: {"steady_images_per_second": ..., "steps": ...}; the caller times the whole process.
Needs `pip install -e '.[bench]'` (torchdistill).
"""
import json
import sys
import time

import torch
from torchdistill.core.distillation import get_distillation_box
from torchvision import transforms as T

from kdlab.core import models
from kdlab.pipeline.bench import PILDataset


def main() -> None:
    spec = json.loads(sys.argv[1])
    data = torch.load(sys.argv[2], weights_only=True)
    device = torch.device(spec["device"])
    size = data["images"].shape[-1]
    tf = [T.RandomCrop(size, padding=spec["pad"])] + ([T.RandomHorizontalFlip()] if spec["flip"] else [])
    tf += [T.ToTensor(), T.Normalize(spec["mean"], spec["std"])]
    dataset = PILDataset(data["images"], data["labels"][: len(data["images"])], T.Compose(tf))
    torch.manual_seed(0)
    channels = data["images"].shape[1]
    teacher = models.build(spec["teacher"][0], channels, spec["classes"], spec["teacher"][1]).to(device).eval()
    student = models.build(spec["student"][0], channels, spec["classes"], spec["student"][1]).to(device)
    hook = {"input": [], "output": ["fc"]}
    kd = {"student_module_path": "fc", "student_module_io": "output", "teacher_module_path": "fc",
          "teacher_module_io": "output", "temperature": spec["temperature"],
          "alpha": 1 - spec["alpha"],  # torchdistill's alpha weighs CE; kdlab's weighs the KD term
          "reduction": "batchmean"}
    train_config = {
        "num_epochs": 1,
        "train_data_loader": {"dataset_id": "train", "sampler": {"class_or_func": torch.utils.data.RandomSampler},
                              "kwargs": {"batch_size": spec["batch_size"], "num_workers": spec["workers"]},
                              "requires_supp": True},
        "teacher": {"forward_hook": hook, "forward_proc": "forward_batch_only", "requires_grad": False},
        "student": {"forward_hook": hook, "forward_proc": "forward_batch_only", "requires_grad": True},
        "optimizer": {"key": "SGD", "kwargs": {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}},
        "criterion": {"key": "WeightedSumLoss",
                      "kwargs": {"sub_terms": {"kd": {"criterion": {"key": "KDLoss", "kwargs": kd}, "weight": 1.0}}}},
    }
    box = get_distillation_box(teacher, student, {"train": dataset}, train_config, device, None, False, 1)
    box.pre_epoch_process(epoch=0)
    warmup, done, start = 3, 0, None
    for i, (x, y, supp) in enumerate(box.train_data_loader):
        if i == warmup:
            start = time.perf_counter()
        if i == warmup + spec["steps"]:
            break
        x, y = x.to(device), y.to(device)
        loss = box.forward_process(x, y, supp)
        box.post_forward_process(loss)
        if i >= warmup:
            done += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(json.dumps({"steady_images_per_second": done / (time.perf_counter() - start), "steps": spec["steps"]}))


if __name__ == "__main__":
    main()
