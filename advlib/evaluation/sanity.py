"""The evaluation checklist of Carlini et al. (2019, "On evaluating adversarial robustness", Sec. 5)
as code (chapter 11): each check is a function of measured outcomes and returns a row with its name,
whether it ``passed`` and the numbers behind the verdict. A failed check does not prove a defence
broken; it says the evaluation cannot be trusted until the failure is explained.

Per-image outcomes are bool tensors, True where the image is still classified correctly after the
attack ("robust"), all on the same images.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.primitives import in_mode, loss_gradient, summed_cross_entropy

# How much evaluation noise a check tolerates before it fails: a fraction of the images.
TOLERANCE = 0.02


def _fraction(mask: torch.Tensor) -> float:
    return mask.float().mean().item() if len(mask) else float("nan")


def reaches_zero(robust_at_large_eps: torch.Tensor, eps: float, tolerance: float = 0.05) -> dict[str, Any]:
    """Robust accuracy must reach ~0 as ε grows: at an ε where the images themselves can be changed
    beyond recognition, a model that stays "robust" hides its gradients (Carlini et al., Sec. 5.2)."""
    accuracy = _fraction(robust_at_large_eps)
    return {"check": "reaches ~0 % at a large ε", "passed": accuracy <= tolerance, "eps": eps, "accuracy": accuracy}


def iterative_beats_single_step(robust_single: torch.Tensor, robust_iterative: torch.Tensor,
                                tolerance: float = TOLERANCE) -> dict[str, Any]:
    """An iterative attack must fool every image a single step fools, up to noise: images fooled by
    FGSM but not by PGD point at a broken or masked gradient path (Sec. 5.3)."""
    only_single = robust_iterative & ~robust_single
    return {"check": "iterative ≥ single-step", "passed": _fraction(only_single) <= tolerance,
            "images": len(robust_single), "fooled only by the single step": int(only_single.sum())}


def white_box_beats_black_box(robust_white: torch.Tensor, robust_black: torch.Tensor,
                              tolerance: float = TOLERANCE) -> dict[str, Any]:
    """White-box attacks, which see the gradients, must fool what a black-box attack (Square) fools;
    when they do not, the gradients mislead them (Sec. 5.5)."""
    only_black = robust_white & ~robust_black
    return {"check": "white-box ≥ black-box", "passed": _fraction(only_black) <= tolerance,
            "images": len(robust_white), "fooled only by the black-box attack": int(only_black.sum())}


def transfer_weaker_than_white_box(robust_white: torch.Tensor, robust_transfer: torch.Tensor,
                                   tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Examples crafted on another model must not beat examples crafted on the model itself (Sec. 5.6)."""
    only_transfer = robust_white & ~robust_transfer
    return {"check": "transfer ≤ white-box", "passed": _fraction(only_transfer) <= tolerance,
            "images": len(robust_white), "fooled only by the transferred examples": int(only_transfer.sum())}


def converged(robust: torch.Tensor, robust_stronger: torch.Tensor, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """More iterations and restarts must change little (Sec. 5.4): if doubling the attack's budget
    still lowers robust accuracy by more than noise, the first number was not an attack's best."""
    drop = _fraction(robust) - _fraction(robust_stronger)
    return {"check": "converged (more steps and restarts change little)", "passed": drop <= tolerance,
            "accuracy": _fraction(robust), "accuracy with twice the budget and restarts": _fraction(robust_stronger)}


def gradient_masking(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor,
                     tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Two signs of masked gradients (Athalye et al. 2018): input gradients that are exactly zero,
    and an attack path along which the loss does not rise (the loss at the attack's result is no
    higher than at the clean image)."""
    with in_mode(model, "eval"):
        gradient = loss_gradient(model, x, summed_cross_entropy(y))
        with torch.no_grad():
            loss_clean = F.cross_entropy(model(x).float(), y, reduction="none")
            loss_adv = F.cross_entropy(model(x_adv).float(), y, reduction="none")
    zero = (gradient.flatten(1).abs().sum(1) == 0)
    flat = loss_adv <= loss_clean
    return {"check": "no sign of masked gradients", "passed": _fraction(zero) <= tolerance and _fraction(flat) <= tolerance,
            "zero-gradient fraction": _fraction(zero), "loss did not rise": _fraction(flat)}
