"""Adversarial weight perturbation (Wu, Xia & Wang, NeurIPS 2020, "Adversarial weight perturbation
helps robust generalization", Sec. 4, Eq. 8–10); chapter 8 uses it in DYNAT's AWP variants, and
:class:`TRADESAWP` is the paper's own AWP row of DYNAT's Table 1.

AWP trains at the worst weights near the current ones: before the optimiser's step it moves every
weight matrix w_l one gradient-ascent step up the training loss, with a size relative to the layer,

    v_l = γ · ‖w_l‖ / ‖∇_{w_l} L‖ · ∇_{w_l} L          (Eq. 10, one ascent step, layer-wise scaling)

computes the training gradient at w + v, steps, and then removes v again, so only the gradient
"sees" the perturbation. The reference code takes the ascent step on a copy of the model with SGD;
a single SGD step moves the copy by −lr·∇(−L), whose direction is the one used here, and the
layer-wise rescaling removes the learning rate, so both give the same v. Only weights with two or
more dimensions (convolutions, linear layers) are perturbed, as in the reference code.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .. import distributed
from ..training import Hooks
from . import DEFENSES
from .adversarial_training import EpochSeeded, trades_adversarial, trades_loss

# Guards the rescaling of a zero gradient (a layer the loss does not reach); the reference's value.
_EPS = 1e-20


def perturbable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters AWP perturbs: weights with at least two dimensions that require gradients."""
    return {name: p for name, p in model.named_parameters()
            if p.dim() > 1 and "weight" in name and p.requires_grad}


def weight_perturbation(weights: dict[str, torch.Tensor], gradients: dict[str, torch.Tensor],
                        gamma: float) -> dict[str, torch.Tensor]:
    """v_l = γ · ‖w_l‖ / (‖g_l‖ + 1e-20) · g_l for every layer l (Wu et al. 2020, Eq. 10), where g_l
    is the gradient of the loss to *increase*."""
    return {name: gamma * weights[name].norm() / (g.norm() + _EPS) * g for name, g in gradients.items()}


class AdversarialWeightPerturbation(Hooks):
    """Perturb the weights of ``model`` before the training forward pass and restore them after
    the optimiser's step. A trainer that inherits it gets :meth:`after_step`, which :func:`fit`
    calls after every optimiser step::

        awp = AdversarialWeightPerturbation(gamma=0.005)
        awp.perturb(target, lambda: awp_loss(target))   # inside the trainer's loss function
        ...                                              # fit: backward, optimiser step
        awp.after_step(...)                              # fit: restores the weights

    ``loss_to_increase()`` is evaluated with ``model`` in its current mode; BatchNorm running
    statistics it would update are put back, so the ascent step leaves no trace but ``v``.
    """

    def __init__(self, gamma: float = 0.005) -> None:
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = gamma
        self._applied: list[tuple[nn.Parameter, torch.Tensor]] = []

    def perturb(self, model: nn.Module, loss_to_increase: Callable[[], torch.Tensor]) -> None:
        if self._applied:
            raise RuntimeError("the previous perturbation was not restored; call restore() first")
        weights = perturbable_weights(model)
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        loss = loss_to_increase()
        gradients = torch.autograd.grad(loss, list(weights.values()), allow_unused=True)
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
            present = {name: g.float() for name, g in zip(weights, gradients) if g is not None}
            # in a distributed run, the whole batch's gradient (the ranks' mean), as on one process
            present = dict(zip(present, distributed.average_over_ranks(list(present.values()))))
            v = weight_perturbation({name: weights[name].detach().float() for name in present}, present, self.gamma)
            for name, delta in v.items():
                weights[name].add_(delta.to(weights[name].dtype))
                self._applied.append((weights[name], delta))

    def restore(self) -> None:
        """Subtract the perturbation added by :meth:`perturb` (after the step, as the reference does:
        the step's change to the weights is kept)."""
        with torch.no_grad():
            for parameter, delta in self._applied:
                parameter.sub_(delta.to(parameter.dtype))
        self._applied = []

    def after_step(self, model: nn.Module, epoch: int) -> None:
        self.restore()


@DEFENSES.register("trades_awp")
class TRADESAWP(EpochSeeded, AdversarialWeightPerturbation):
    """AWP on TRADES (Wu et al. 2020, Sec. 4, "TRADES-AWP"; the AWP row of DYNAT's Table 1): x'
    maximises TRADES's KL(f(x) ‖ f(x')) (summed) from x + 0.001·N(0, I) with the model in ``bn_mode``
    (eval in the authors' code); from epoch ``awp_from_epoch`` on (counted from 1; epoch 10 of 200 in
    the authors' script) the weights are perturbed by AWP (γ = ``awp_gamma``) against the TRADES loss,
    and the model minimises TRADES's loss CE(f(x), y) + β · KL(f(x) ‖ f(x')) at the perturbed weights.
    Pass the trainer to ``fit`` as the loss function: its ``after_step`` removes the perturbation
    after the optimiser's step. Returns f(x) as the training logits, as TRADES does."""

    def __init__(self, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10, beta: float = 6.0,
                 awp_gamma: float = 0.005, awp_from_epoch: int = 10, bn_mode: str = "eval",
                 seed: int = 0) -> None:
        EpochSeeded.__init__(self, seed)
        AdversarialWeightPerturbation.__init__(self, awp_gamma)
        self.eps, self.alpha, self.steps, self.beta, self.bn_mode = eps, alpha, steps, beta, bn_mode
        self.awp_from_epoch = awp_from_epoch

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        x_adv = trades_adversarial(model, x, eps=self.eps, alpha=self.alpha, steps=self.steps,
                                   generator=self.generator(x.device, epoch), bn_mode=self.bn_mode)
        if epoch + 1 >= self.awp_from_epoch:
            self.perturb(model, lambda: trades_loss(model(x), model(x_adv), y, self.beta))
        logits_clean, logits_adv = model(x), model(x_adv)
        return trades_loss(logits_clean, logits_adv, y, self.beta), logits_clean
