"""The contract every attack follows."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from ._checks import check_inputs


@contextlib.contextmanager
def model_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Run the body with ``model`` in ``"eval"`` or ``"train"`` mode, then restore its mode."""
    if mode not in ("eval", "train"):
        raise ValueError(f"mode must be 'eval' or 'train', not {mode!r}")
    was_training = model.training
    model.train(mode == "train")
    try:
        yield
    finally:
        model.train(was_training)


class Attack:
    """``attack(model, x, y) -> x_adv``, same shape, dtype and device as ``x``.

    * ``x``: float images in [0, 1] (normalisation belongs inside the model), ``y``: int64 labels.
    * The model is run in ``model_mode`` ("eval" by default; adversarial training may ask for
      "train", which updates BatchNorm statistics while crafting) and restored afterwards.
    * Gradients are taken with ``torch.autograd.grad`` with respect to the input only, so the
      model's ``.grad`` fields are never touched.
    * Randomness comes from a private ``torch.Generator`` seeded by ``seed`` (or the one passed to
      the call): the global RNG state is the same before and after an attack, and the same seed
      gives the same ``x_adv``.

    Subclasses implement :meth:`perturb`.
    """

    def __init__(self, *, seed: int = 0, model_mode: str = "eval") -> None:
        if model_mode not in ("eval", "train"):
            raise ValueError(f"model_mode must be 'eval' or 'train', not {model_mode!r}")
        self.seed, self.model_mode = seed, model_mode

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        with self.prepared(model, x, y, generator) as generator:
            x_adv = self.perturb(model, x.detach(), y, generator)
        return x_adv.detach().to(dtype=x.dtype)

    @contextlib.contextmanager
    def prepared(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 generator: torch.Generator | None = None) -> Iterator[torch.Generator]:
        """Validate the inputs, put the model in ``model_mode`` with gradients on, and yield the
        generator to draw from (a fresh one seeded by ``seed`` unless one is given)."""
        check_inputs(x, y)
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(self.seed)
        with model_mode(model, self.model_mode), torch.enable_grad():
            yield generator

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({settings})"
