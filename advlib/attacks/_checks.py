"""Input checks shared by every attack: bad input fails loudly, with the fix in the message."""
from __future__ import annotations

import sys

import torch

# Images that went through a float round trip (e.g. uint8 / 255 on another device) may sit a hair
# outside [0, 1]; anything further out is almost always normalised input.
RANGE_TOLERANCE = 1e-5


def check_eps(eps: float, name: str = "eps") -> None:
    if not isinstance(eps, (int, float)) or eps != eps:
        raise TypeError(f"{name} must be a number, not {eps!r}")
    if eps < 0:
        raise ValueError(f"{name} must be >= 0, got {eps}; the perturbation budget cannot be negative")


def check_inputs(x: torch.Tensor, y: torch.Tensor) -> None:
    """``x``: float (N, C, H, W) images in [0, 1]; ``y``: int64 labels of shape (N,) on x's device."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"x and y must be torch tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be a 4-D batch (N, C, H, W), got shape {tuple(x.shape)}; "
                         "add a batch dimension with x.unsqueeze(0) for a single image")
    if not x.is_floating_point():
        raise TypeError(f"x must be a float tensor in [0, 1], got {x.dtype}; convert uint8 images with x.float() / 255")
    if x.numel() and (x.min() < -RANGE_TOLERANCE or x.max() > 1 + RANGE_TOLERANCE):
        raise ValueError(f"x must lie in [0, 1], got values in [{x.min().item():.3g}, {x.max().item():.3g}]; "
                         "pass unnormalised images and put the normalisation inside the model")
    if y.dim() != 1 or len(y) != len(x):
        raise ValueError(f"y must hold one label per image: shape ({len(x)},), got {tuple(y.shape)}")
    if y.dtype != torch.int64:
        raise TypeError(f"y must be int64 class indices, got {y.dtype}; use y.long()")
    if y.device != x.device:
        raise ValueError(f"x is on {x.device} but y is on {y.device}; move both to the model's device")


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """The closest point to ``x_adv`` in the L∞ ball of radius ``eps`` around ``x``, within [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0, 1)


NORMS = ("Linf", "L2")


def check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, not {norm!r}")


def project_l2(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """``x_adv`` pulled radially into the L2 ball of radius ``eps`` around ``x``, then clipped to [0, 1]
    (the projection used by APGD-L2; clipping can only shorten the perturbation)."""
    delta = x_adv - x
    norms = delta.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
    return (x + delta * torch.clamp(eps / (norms + 1e-12), max=1.0)).clamp_(0, 1)


# ---- Checks AutoAttack runs on the model (Croce & Hein 2020; flags of the reference code) ----
# Each returns a warning sentence, or None when the model looks fine.

def flag_randomized(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int = 5,
                    tolerance: float = 1e-4) -> str | None:
    """Randomised forward pass: the same batch gives different (L2-normalised) logits or accuracy."""
    with torch.no_grad():
        outputs = [model(x).float() for _ in range(repeats)]
    normalised = [o / (o.flatten(1).norm(dim=1, keepdim=True) + 1e-10) for o in outputs]
    largest = max((a - b).flatten(1).norm(dim=1).max().item() for a in normalised for b in normalised)
    correct = {int((o.argmax(1) == y).sum()) for o in outputs}
    if largest > tolerance or len(correct) > 1:
        return ("randomised forward pass: two forward passes of the same batch differ "
                f"(largest difference {largest:.2g}); use version='rand' (EOT) for randomised defences")
    return None


def flag_softmax(logits: torch.Tensor, tolerance: float = 1e-5) -> str | None:
    """Probabilities instead of logits: every output in [0, 1] and every row sums to 1."""
    logits = logits.float()
    if (logits.max() < 1 + tolerance and logits.min() > -tolerance
            and ((logits.sum(-1) - 1).abs() < tolerance).all()):
        return ("softmax outputs: the model seems to return probabilities (rows in [0, 1] summing to 1); "
                "pass logits, or the attacks' losses saturate and robustness is overestimated")
    return None


def flag_zero_gradients(zero: torch.Tensor, attack: str) -> str | None:
    """Examples whose gradient is exactly zero at a starting point: gradient masking."""
    count = int(zero.sum())
    if count:
        return (f"zero gradients: {count} of {zero.numel()} examples ({count / zero.numel():.1%}) have an "
                f"all-zero input gradient in {attack}; gradient-based attacks cannot move them, so the "
                "evaluation may be unreliable (gradient masking)")
    return None


def flag_square_beats_white_box(breakdown: list[tuple[str, float]], tolerance: float = 0.002) -> str | None:
    """Square (black-box) found points that every white-box attack missed."""
    accuracies = dict(breakdown)
    if "square" not in accuracies or len(accuracies) < 2:
        return None
    white_box = min(value for name, value in accuracies.items() if name != "square")
    if accuracies["square"] < white_box - tolerance:
        return (f"Square beats the white-box attacks: it lowered robust accuracy by "
                f"{white_box - accuracies['square']:.2%} after them; gradients are probably masked, "
                "so try more Square queries/restarts or an adaptive attack")
    return None


_AUTOGRAD_ENTRY_POINTS = {"grad", "backward", "_make_grads"}


def flag_dynamic(model: torch.nn.Module, x: torch.Tensor) -> str | None:
    """Autograd inside ``forward`` (a dynamic defence, e.g. test-time optimisation): a forward pass
    calls ``torch.autograd.grad`` or ``.backward``."""
    calls: list[str] = []

    def trace(frame, event, arg):
        if event == "call" and frame.f_code.co_name in _AUTOGRAD_ENTRY_POINTS:
            calls.append(frame.f_code.co_name)
        return None

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        with torch.enable_grad():
            model(x)
    finally:
        sys.settrace(previous)
    if calls:
        return ("autograd inside forward: the forward pass computes gradients (a dynamic defence); "
                "AutoAttack alone may not be enough, add an adaptive attack")
    return None


def flag_targets(n_classes: int, attacks: list[str], apgd_targets: int, fab_targets: int) -> str | None:
    """More target classes than wrong classes, or too few classes for the DLR losses."""
    problems = []
    if "apgd-dlr" in attacks or "apgd-t" in attacks:
        if n_classes <= 2:
            problems.append(f"with {n_classes} classes the DLR loss is undefined")
        elif n_classes == 3 and "apgd-t" in attacks:
            problems.append("with 3 classes the targeted DLR loss is undefined")
    if "apgd-t" in attacks and apgd_targets + 1 > n_classes:
        problems.append(f"APGD-T asks for {apgd_targets} target classes but only {n_classes - 1} exist")
    if "fab-t" in attacks and fab_targets + 1 > n_classes:
        problems.append(f"FAB-T asks for {fab_targets} target classes but only {n_classes - 1} exist")
    if problems:
        return "more targets than classes: " + "; ".join(problems) + " (the extra targets are skipped)"
    return None
