"""AutoAttack's checks of a *model* (Croce & Hein 2020; the flags of the reference code): each
returns a warning sentence, or None when the model looks fine. Input checks live in
:mod:`advlib.attacks.primitives`."""
from __future__ import annotations

import sys

import torch


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
    entered = False

    def trace(frame, event, arg):
        nonlocal entered
        if event == "call" and frame.f_code.co_name in _AUTOGRAD_ENTRY_POINTS:
            entered = True
        return None

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        with torch.enable_grad():
            model(x)
    finally:
        sys.settrace(previous)
    if entered:
        return ("autograd inside forward: the forward pass computes gradients (a dynamic defence); "
                "AutoAttack alone may not be enough, add an adaptive attack")
    return None


def flag_targets(n_classes: int, attacks: list[str], apgd_targets: int, fab_targets: int) -> str | None:
    """Too few classes for the DLR losses, or more target classes than wrong classes."""
    problems = []
    if "apgd-dlr" in attacks or "apgd-t" in attacks:
        if n_classes <= 2:
            problems.append(f"with {n_classes} classes the DLR loss is undefined")
        elif n_classes == 3 and "apgd-t" in attacks:
            problems.append("with 3 classes the targeted DLR loss is undefined")
    if "apgd-t" in attacks and apgd_targets + 1 > n_classes:
        problems.append(f"APGD-T asks for {apgd_targets} target classes but only {n_classes - 1} exist "
                        "(the extra ones are skipped)")
    if "fab-t" in attacks and fab_targets + 1 > n_classes:
        problems.append(f"FAB-T asks for {fab_targets} target classes but only {n_classes - 1} exist "
                        "(the extra ones are skipped)")
    if problems:
        return "too few classes: " + "; ".join(problems)
    return None
