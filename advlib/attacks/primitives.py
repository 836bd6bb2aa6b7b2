"""The pieces every attack, and every trainer's inner maximisation, is built from (chapter 2).

Input and argument checks (bad input fails loudly, with the fix in the message), the L∞ and L2
projections, the model-mode context, the input gradient, signed-gradient ascent, the uniform random
start, the margin of the true class, and the per-example worst case over restarts. Attacks live one
per module next to this one; AutoAttack's checks of a *model* live in ``_checks``.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

# Images that went through a float round trip (e.g. uint8 / 255 on another device) may sit a hair
# outside [0, 1]; anything further out is almost always normalised input.
RANGE_TOLERANCE = 1e-5

BN_MODES = ("eval", "train")


# --- checks -------------------------------------------------------------------------------------------

def check_eps(eps: float, name: str = "eps") -> None:
    if not isinstance(eps, (int, float)) or eps != eps:
        raise TypeError(f"{name} must be a number, not {eps!r}")
    if eps < 0:
        raise ValueError(f"{name} must be >= 0, got {eps}; the perturbation budget cannot be negative")


def check_inputs(x: torch.Tensor, y: torch.Tensor, num_classes: int | None = None) -> None:
    """``x``: finite float (N, C, H, W) images in [0, 1]; ``y``: int64 labels of shape (N,) on x's
    device, in [0, ``num_classes``) when the number of classes is known."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"x and y must be torch tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be a 4-D batch (N, C, H, W), got shape {tuple(x.shape)}; "
                         "add a batch dimension with x.unsqueeze(0) for a single image")
    if not x.is_floating_point():
        raise TypeError(f"x must be a float tensor in [0, 1], got {x.dtype}; convert uint8 images with x.float() / 255")
    if x.numel() and not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        raise ValueError(f"x holds NaN or infinite pixels in {bad} of {len(x)} images; check what produced them "
                         "(a division by zero, a diverged purifier or attack)")
    if x.numel() and (x.min() < -RANGE_TOLERANCE or x.max() > 1 + RANGE_TOLERANCE):
        raise ValueError(f"x must lie in [0, 1], got values in [{x.min().item():.3g}, {x.max().item():.3g}]; "
                         "pass unnormalised images and put the normalisation inside the model")
    if y.dim() != 1 or len(y) != len(x):
        raise ValueError(f"y must hold one label per image: shape ({len(x)},), got {tuple(y.shape)}")
    if y.dtype != torch.int64:
        raise TypeError(f"y must be int64 class indices, got {y.dtype}; use y.long()")
    if y.device != x.device:
        raise ValueError(f"x is on {x.device} but y is on {y.device}; move both to the model's device")
    check_labels(y, num_classes)


def check_labels(y: torch.Tensor, num_classes: int | None = None) -> None:
    """Labels are class indices: >= 0, and < ``num_classes`` when it is known (a label out of range
    would index past the logits, and on a GPU that is a device-side assert, not an error message)."""
    if not len(y):
        return
    low, high = int(y.min()), int(y.max())
    if low < 0 or (num_classes is not None and high >= num_classes):
        allowed = f"[0, {num_classes})" if num_classes is not None else "non-negative"
        raise ValueError(f"labels must be class indices {allowed}, got values in [{low}, {high}]; "
                         "pass the class index of each image, not a one-hot vector or a name")


def check_positive_ints(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_step_settings(alpha: float, steps: int) -> None:
    # alpha = 0 is allowed: "alpha = eps / 4" must stay valid at eps = 0 (the clean accuracy).
    if not (isinstance(alpha, (int, float)) and alpha >= 0):
        raise ValueError(f"the step size alpha must be a number >= 0, got {alpha!r}")
    check_positive_ints(steps=steps)


NORMS = ("Linf", "L2")


def check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, not {norm!r}")


def check_bn_mode(bn_mode: str) -> None:
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be 'eval' or 'train', not {bn_mode!r}")


# --- the threat model -----------------------------------------------------------------------------------

def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """The closest point to ``x_adv`` in the L∞ ball of radius ``eps`` around ``x``, within [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0, 1)


def project_l2(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """``x_adv`` pulled radially into the L2 ball of radius ``eps`` around ``x``, then clipped to [0, 1]
    (the projection used by APGD-L2; clipping can only shorten the perturbation)."""
    delta = x_adv - x
    norms = delta.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
    return (x + delta * torch.clamp(eps / (norms + 1e-12), max=1.0)).clamp_(0, 1)


def uniform_start(x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """x + U(−ε, ε)^d, projected onto [0, 1]: the random start of PGD and CW-∞ (Madry et al. 2018)."""
    noise = torch.empty_like(x).uniform_(-eps, eps, generator=generator)
    return project_linf(x + noise, x, eps)


# --- gradients --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def in_mode(model: nn.Module, bn_mode: str) -> Iterator[None]:
    """Run the body with ``model`` in ``"eval"`` or ``"train"`` mode (BatchNorm's running or batch
    statistics), then restore its mode."""
    check_bn_mode(bn_mode)
    was_training = model.training
    model.train(bn_mode == "train")
    try:
        yield
    finally:
        model.train(was_training)


def input_gradient(objective: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """∇ₓ of the scalar ``objective(x)``. ``torch.autograd.grad`` leaves every model's ``.grad``
    fields untouched."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (gradient,) = torch.autograd.grad(objective(x), x)
    return gradient


def loss_gradient(model: nn.Module, x: torch.Tensor, loss: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """∇ₓ of ``loss(model(x))``, the logits in float32."""
    return input_gradient(lambda inputs: loss(model(inputs).float()), x)


def summed_cross_entropy(y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The cross-entropy summed over the batch, not averaged, so that each example's gradient is the
    same whatever the batch size (a mean would shrink it by 1/N, and tiny gradients lose their sign
    to underflow)."""
    return lambda logits: F.cross_entropy(logits, y, reduction="sum")


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``Z_y − max_{i≠y} Z_i`` per example: positive while the true class wins (Carlini & Wagner 2017,
    Sec. V.A; CW-L2, CW-∞, Square and the DLR losses are built on it). The true class is masked with
    −∞ before the max; multiplying by a one-hot mask instead (as some libraries do) returns 0 for the
    "max" whenever every other logit is negative."""
    true_logit = logits.gather(1, y[:, None]).squeeze(1)
    return true_logit - logits.scatter(1, y[:, None], -float("inf")).amax(1)


# --- signed-gradient ascent ---------------------------------------------------------------------------------

def sign_ascent(objective: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, x_start: torch.Tensor,
                eps: float, alpha: float, steps: int) -> torch.Tensor:
    """``steps`` signed-gradient ascent steps of size ``alpha`` on the scalar ``objective(x')`` from
    ``x_start``, each projected back onto the L∞ ball of radius ``eps`` around ``x`` and onto
    [0, 1]. Returns the last iterate (as Kurakin et al. and Madry et al. do)."""
    x_adv = x_start
    for _ in range(steps):
        x_adv = project_linf(x_adv + alpha * input_gradient(objective, x_adv).sign(), x, eps)
    return x_adv


def iterate_sign_steps(model: nn.Module, x: torch.Tensor, x_start: torch.Tensor,
                       loss: Callable[[torch.Tensor], torch.Tensor], eps: float, alpha: float,
                       steps: int) -> torch.Tensor:
    """:func:`sign_ascent` on ``loss(model(x'))``, the logits in float32. BIM and PGD ascend the
    cross-entropy; TRADES and DYNAT craft their training examples with other losses; the
    adversarial distillation methods ascend objectives that also involve the teacher."""
    return sign_ascent(lambda x_adv: loss(model(x_adv).float()), x, x_start, eps, alpha, steps)


def worst_case_over_restarts(run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], model: nn.Module,
                             x: torch.Tensor, y: torch.Tensor, restarts: int) -> torch.Tensor:
    """``run(x, y) -> x_adv`` repeated ``restarts`` times (each call draws its own random start), per
    example keeping the **first run that misclassifies** it and, for an example that no run fools,
    the run with the highest final cross-entropy. Later runs attack only the examples no earlier run
    has fooled, so robust accuracy is the per-example worst case over restarts."""
    if restarts == 1:
        return run(x, y)
    best = x.clone()
    best_loss = torch.full((len(x),), -float("inf"), device=x.device)
    unfooled = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        index = unfooled.nonzero().flatten()
        if len(index) == 0:
            break
        x_run = run(x[index], y[index])
        with torch.no_grad():
            logits = model(x_run).float()
        loss = F.cross_entropy(logits, y[index], reduction="none")
        fooled = logits.argmax(1) != y[index]
        better = fooled | (loss > best_loss[index])
        best[index[better]] = x_run[better]
        best_loss[index[better]] = loss[better]
        unfooled[index[fooled]] = False
    return best
