"""Named features addressed by module path (``layer2``, ``layer3.1``): forward-hook taps for inspection,
torch.fx extractors for training (traceable by torch.compile, and cut after the last feature asked for), and
linear CKA (Kornblith et al. 2019) between two models' features. No model class is copied to expose a feature."""
from __future__ import annotations

import re

import torch
from torch import nn

from kdlab.infra.schema import ParamsError


def layers(model: nn.Module) -> list[str]:
    """The model's layer names (``layer1``, ``layer2``, ...), in order."""
    return [name for name, _ in model.named_children() if re.fullmatch(r"layer\d+", name)]


def tap_paths(model: nn.Module) -> list[str]:
    """Every path a tap may address: the layers and their blocks (``layer3``, ``layer3.0``, ...)."""
    out = []
    for st in layers(model):
        out.append(st)
        out.extend(f"{st}.{i}" for i in range(len(model.get_submodule(st))))
    return out


def check_paths(model: nn.Module, paths, key: str, role: str) -> None:
    allowed = tap_paths(model)
    for i, path in enumerate(paths):
        if path not in allowed:
            raise ParamsError(f"{key}[{i}]", f"the {role} ({type(model).__name__}) has no layer {path!r}; "
                              f"allowed: {', '.join(allowed)}")


#: the key of the model's own output in an :func:`extractor`'s result
OUTPUT = "output"


def extractor(model: nn.Module, paths, output: bool = True) -> nn.Module:
    """``extractor(model, ["layer2"])(x) -> {"layer2": ..., "output": model(x)}``, as a torch.fx graph over the
    very submodules of ``model`` (training it trains ``model``). Without ``output``, the graph stops after the
    deepest path: a teacher tapped at ``layer1`` runs only its stem and ``layer1``. Its train/eval mode is
    its own (set it with the model's)."""
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    nodes = {p: p for p in paths}
    if output:
        last = get_graph_node_names(model)[0][-1]
        if last in nodes:
            raise ValueError(f"{last!r} is the model's output node; it cannot also be a tap")
        nodes[last] = OUTPUT
    fx = create_feature_extractor(model, return_nodes=nodes)
    return fx.train(model.training)


class Taps:
    """``with Taps(model, ["layer2"]) as taps: model(x); taps.out["layer2"]``: outputs of named submodules."""

    def __init__(self, model: nn.Module, paths):
        self.out: dict[str, torch.Tensor] = {}
        self.handles = [model.get_submodule(p).register_forward_hook(self._hook(p)) for p in paths]

    def _hook(self, path: str):
        def hook(module, inputs, output):
            self.out[path] = output
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def __enter__(self) -> "Taps":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


@torch.no_grad()
def features(model: nn.Module, images: torch.Tensor, paths, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Flattened features (N, D) float32 on the CPU at each path, for normalised ``images`` in eval mode."""
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {p: [] for p in paths}
    with Taps(model, paths) as taps:
        for start in range(0, len(images), batch_size):
            model(images[start:start + batch_size])
            for p in paths:
                parts[p].append(taps.out[p].float().flatten(1).cpu())
    return {p: torch.cat(v) for p, v in parts.items()}


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between feature matrices x (n, p) and y (n, q) of the same n examples, in float64.

    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred X and Y, computed through the n x n
    Gram matrices so that wide features (p, q >> n) stay cheap. 1 for x == y; invariant to orthogonal
    transforms and isotropic scaling of either side.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same examples on both sides, got {x.shape[0]} and {y.shape[0]} rows")
    x = x.double().flatten(1)
    y = y.double().flatten(1)
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    k, l_ = x @ x.T, y @ y.T
    hsic = (k * l_).sum()
    return float(hsic / (k.norm() * l_.norm()))
