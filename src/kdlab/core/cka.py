"""Centred kernel alignment between two models' features on the same images, biased and unbiased.

The biased estimator (:func:`kdlab.core.features.linear_cka`, Kornblith et al. 2019) is pulled towards 1 when features
are wide against the number of images: two unrelated random networks can score high. The unbiased one replaces
HSIC by its U-statistic (Song et al. 2012), as Nguyen et al. (2021) do, so unrelated features score about 0
whatever their width. Both are computed here through the n x n Gram matrices, in float64.
"""
from __future__ import annotations

import torch

from kdlab.core.features import features, linear_cka


def _gram(x: torch.Tensor) -> torch.Tensor:
    x = x.double().flatten(1)
    return x @ x.T


def unbiased_hsic(k: torch.Tensor, l_: torch.Tensor) -> torch.Tensor:
    """The U-statistic estimate of HSIC from Gram matrices K and L (n > 3): with zeroed diagonals,
    (tr(KL) + 1'K1 1'L1 / ((n-1)(n-2)) - 2/(n-2) 1'KL1) / (n(n-3))."""
    n = k.shape[0]
    if n < 4:
        raise ValueError(f"the unbiased HSIC needs at least 4 images, got {n}")
    k = k.clone().fill_diagonal_(0)
    l_ = l_.clone().fill_diagonal_(0)
    ones_k, ones_l = k.sum(0), l_.sum(0)
    return ((k * l_).sum() + ones_k.sum() * ones_l.sum() / ((n - 1) * (n - 2))
            - 2 * (ones_k @ ones_l) / (n - 2)) / (n * (n - 3))


def unbiased_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA from the unbiased HSIC of x (n, p) and y (n, q): 1 for x == y (up to rotation and scale), about
    0 for unrelated features of any width."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same examples on both sides, got {x.shape[0]} and {y.shape[0]} rows")
    k, l_ = _gram(x), _gram(y)
    denom = (unbiased_hsic(k, k) * unbiased_hsic(l_, l_)).sqrt()
    return float(unbiased_hsic(k, l_) / denom)


def both(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """{"biased": ..., "unbiased": ...} linear CKA of the same two feature matrices."""
    return {"biased": linear_cka(x, y), "unbiased": unbiased_cka(x, y)}


def profile(model: torch.nn.Module, images: torch.Tensor, paths: list[str], reference: dict) -> dict[str, dict]:
    """Per layer of ``paths``, :func:`both` between ``model``'s features on ``images`` and ``reference`` (another
    model's, :func:`kdlab.core.features.features` on the same images): every study's CKA."""
    f = features(model, images, paths)
    return {st: both(f[st], reference[st]) for st in paths}
