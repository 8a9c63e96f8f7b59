"""Channel pruning of a trained network by channel importance (question 3's tool; the study is
:mod:`kdlab.pipeline.cuts`).

Structured pruning goes through torch-pruning's DependencyGraph (DepGraph, Fang et al. 2023), which finds
every layer a channel touches (a residual layer's channels run through all of its blocks and shortcuts),
so no channel bookkeeping is written here. Channels are ranked globally (each group's scores normalised by
their mean) and removed until the model has at most the target parameter count: a search over the global
pruning ratio, each try on a fresh copy. Criteria (``prune.criterion``):

- ``l1``: the L1 norm of a channel's weights over its whole group;
- ``bn_scale``: |gamma| of the BatchNorms in the group (network slimming);
- ``taylor``: first-order Taylor, |weight x gradient| of the CE loss on the calibration images;
- ``activation``: mean |activation| entering the next layer on the calibration images (Minitron);
- ``random``: the control.

Optionally whole residual blocks are dropped first (``keep``, as a ``carved`` init does). Pruning is
one-shot (``prune.steps: 1``) or iterative: the parameter budget shrinks linearly over ``steps`` and the
student is distilled for ``finetune_steps`` KD steps between them. A pruned model is saved with the
pruning history, which rebuilds its shape from a fresh model of the teacher's architecture.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kdlab.core.features import layers
from kdlab.core.models import count_params
from kdlab.infra.schema import ParamsError


def importance(criterion: str):
    import torch_pruning as tp

    imp = tp.importance
    makers = {"l1": lambda: imp.GroupMagnitudeImportance(p=1), "bn_scale": imp.BNScaleImportance,
              "taylor": imp.GroupTaylorImportance, "activation": imp.ActivationImportance,
              "random": imp.RandomImportance}
    if criterion not in makers:
        raise ParamsError("prune.criterion", f"unknown criterion {criterion!r}; allowed: {', '.join(makers)}")
    return makers[criterion]()


def _classifier(model: nn.Module) -> list[nn.Module]:
    """Layers whose output channels are not pruned: the classifier's outputs are the classes."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def prune_at(model: nn.Module, criterion: str, ratio: float, calib: tuple[torch.Tensor, torch.Tensor],
             max_ratio: float = 0.9, seed: int = 0) -> tuple[nn.Module, list]:
    """A copy of ``model`` with the fraction ``ratio`` of its prunable channels removed (globally ranked by
    ``criterion`` on the calibration ``(images, labels)``), and the pruning history that rebuilds its shape."""
    import torch_pruning as tp

    m = copy.deepcopy(model).eval()
    images, labels = calib
    imp = importance(criterion)
    pruner = tp.pruner.MetaPruner(m, images[:2], importance=imp, pruning_ratio=ratio, global_pruning=True,
                                  max_pruning_ratio=max_ratio, ignored_layers=_classifier(m))
    torch.manual_seed(seed)  # the random criterion draws the same scores at every ratio tried
    if criterion == "taylor":
        m.zero_grad()
        F.cross_entropy(m(images), labels).backward()
    elif criterion == "activation":
        with torch.no_grad(), imp.compute_importance(m):
            m(images)
    pruner.step()
    m.zero_grad(set_to_none=True)
    history = [(name, bool(out), [int(i) for i in idxs]) for name, out, idxs in pruner.DG.pruning_history()]
    return m, history


def prune_to(model: nn.Module, criterion: str, target: int, calib, max_ratio: float = 0.9, seed: int = 0,
             resolution: float = 1 / 1024, transform: Callable[[nn.Module], nn.Module] | None = None,
             key: str = "prune.max_ratio") -> tuple[nn.Module, list, float]:
    """The largest pruning of ``model`` with at most ``target`` parameters found by bisection on the global
    ratio (to ``resolution``): (model, history, ratio). ``transform``: applied to every pruned candidate before it
    is counted and kept (channels scored on the whole ``model``, then blocks carved out of it); without one,
    ``target`` at or above the model's size gives an exact copy. ``key``: the param a too-small ``max_ratio``
    is blamed on."""
    shape = transform or (lambda m: m)
    if transform is None and target >= count_params(model):
        return copy.deepcopy(model), [], 0.0

    def at(ratio: float) -> tuple[nn.Module, list]:
        pruned, history = prune_at(model, criterion, ratio, calib, max_ratio, seed)
        return shape(pruned), history

    best = at(max_ratio)
    if count_params(best[0]) > target:
        raise ParamsError(key, f"{criterion} pruning at the maximum ratio {max_ratio} leaves "
                          f"{count_params(best[0])} parameters, above the target {target}; raise {key} "
                          f"or ask for a larger size")
    lo, hi = 0.0, max_ratio  # lo: too many parameters left; hi: within the target
    while hi - lo > resolution:
        mid = (lo + hi) / 2
        cand = at(mid)
        if count_params(cand[0]) <= target:
            hi, best = mid, cand
        else:
            lo = mid
    return best[0], best[1], hi


def prune_iteratively(model: nn.Module, criterion: str, target: int, calib, steps: int = 1,
                      between: Callable[[nn.Module, int], None] | None = None, max_ratio: float = 0.9,
                      seed: int = 0) -> tuple[nn.Module, list[list]]:
    """``steps`` pruning steps down to ``target`` parameters, the budget shrinking linearly; ``between(model,
    step)`` (e.g. a few KD steps) runs after every step but the last. Returns the model and one history per step."""
    start = count_params(model)
    histories = []
    for k in range(1, steps + 1):
        goal = round(start - (start - target) * k / steps)
        model, history, _ = prune_to(model, criterion, goal, calib, max_ratio, seed + k)
        histories.append(history)
        if between is not None and k < steps:
            between(model, k)
    return model, histories


def replay(model: nn.Module, histories: list[list], example: torch.Tensor) -> nn.Module:
    """Give a fresh ``model`` (the teacher's architecture) the shape recorded in ``histories``, in place."""
    import torch_pruning as tp

    for history in histories:
        if history:
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
            graph.load_pruning_history([(n, o, list(i)) for n, o, i in history])
    return model


def channel_profile(original: nn.Module, pruned: nn.Module) -> dict[str, list[int]]:
    """{conv path: [channels kept, channels before]} for every convolution of ``original`` kept in ``pruned``."""
    kept = {n: m.out_channels for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d)}
    return {n: [kept[n], m.out_channels] for n, m in original.named_modules()
            if isinstance(m, nn.Conv2d) and n in kept}


def layer_profile(profile: dict[str, list[int]], model: nn.Module) -> dict[str, float]:
    """Fraction of output channels kept per layer (``stem`` = convolutions outside the layers)."""
    names = layers(model)
    sums: dict[str, list[int]] = {}
    for path, (k, n) in profile.items():
        top = path.split(".")[0]
        key = top if top in names else "stem"
        s = sums.setdefault(key, [0, 0])
        s[0] += k
        s[1] += n
    order = ["stem", *names]
    return {k: sums[k][0] / sums[k][1] for k in order if k in sums}
