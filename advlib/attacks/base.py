"""The contract every attack follows."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from .primitives import check_bn_mode, check_inputs, check_labels, in_mode


class Attack:
    """``attack(model, x, y) -> x_adv``, same shape, dtype and device as ``x``.

    * ``x``: float images in [0, 1] (normalisation belongs inside the model), ``y``: int64 labels.
    * The model is run in ``bn_mode`` ("eval" by default; adversarial training may ask for
      "train", which updates BatchNorm statistics while crafting) and restored afterwards.
    * Gradients are taken with ``torch.autograd.grad`` with respect to the input only, so the
      model's ``.grad`` fields are never touched.
    * Randomness comes from a private ``torch.Generator`` seeded by ``seed`` (or the one passed to
      the call): the global RNG state is the same before and after an attack, and the same seed
      gives the same ``x_adv``.

    Subclasses implement :meth:`perturb`.
    """

    def __init__(self, *, seed: int = 0, bn_mode: str = "eval") -> None:
        check_bn_mode(bn_mode)
        self.seed, self.bn_mode = seed, bn_mode

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        with self.prepared(model, x, y, generator) as generator:
            x_adv = self.perturb(model, x.detach(), y, generator)
        return x_adv.detach().to(dtype=x.dtype)

    @contextlib.contextmanager
    def prepared(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 generator: torch.Generator | None = None) -> Iterator[torch.Generator]:
        """Validate the inputs (the labels against the model's number of classes too), put the model
        in ``bn_mode`` with gradients on, and yield the generator to draw from (a fresh one seeded
        by ``seed`` unless one is given)."""
        check_inputs(x, y)
        if len(y):
            # one image in eval mode tells the number of classes without touching BatchNorm's statistics
            with in_mode(model, "eval"), torch.no_grad():
                check_labels(y, model(x[:1]).shape[-1])
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(self.seed)
        with in_mode(model, self.bn_mode), torch.enable_grad():
            yield generator

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({settings})"
