"""Students carved out of the teacher. ``keep_blocks``: DistilBERT-style, keep a subset of the residual
blocks of each layer and their weights (the stem, the classifier and every kept block are copied)."""
from __future__ import annotations

import copy

from torch import nn

from kdlab.core.features import layers
from kdlab.infra.schema import ParamsError


def keep_blocks(model: nn.Module, keep: list[list[int]], key: str = "keep") -> nn.Module:
    """A copy of ``model`` whose layer i holds only the blocks ``keep[i]`` (indices into that layer).

    Works for any model whose layers are ``nn.Sequential`` children named ``layer1``.. (the CIFAR ResNets
    and torchvision's). The first block of a layer that changes width or resolution must be kept.
    """
    names = layers(model)
    if len(keep) != len(names):
        raise ParamsError(key, f"lists {len(keep)} layers but {type(model).__name__} has {len(names)} "
                          f"({', '.join(names)}); give one list of block indices per layer")
    out = copy.deepcopy(model)
    for i, (name, idx) in enumerate(zip(names, keep)):
        blocks = model.get_submodule(name)
        if not idx or sorted(set(idx)) != list(idx) or idx[0] < 0 or idx[-1] >= len(blocks):
            raise ParamsError(f"{key}[{i}]", f"{idx} is not an increasing, non-empty list of block indices of "
                              f"{name}, which has blocks 0..{len(blocks) - 1}")
        if idx[0] != 0 and _changes_shape(blocks[0]):
            raise ParamsError(f"{key}[{i}]", f"{name}'s block 0 changes the width or resolution (it has a "
                              f"projection shortcut), so it must be kept; got {idx}")
        setattr(out, name, nn.Sequential(*(copy.deepcopy(blocks[j]) for j in idx)))
    return out


def _changes_shape(block: nn.Module) -> bool:
    projection = getattr(block, "downsample", None) or getattr(block, "shortcut", None)
    return projection is not None and len(list(projection.parameters())) > 0


def reinit(model: nn.Module) -> nn.Module:
    """The same architecture, freshly initialised from torch's (seeded) generator, as the model registry
    initialises it: the control for a teacher-initialised student."""
    for m in model.modules():
        if m is not model and hasattr(m, "reset_parameters"):
            m.reset_parameters()
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model
