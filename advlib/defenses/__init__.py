"""Defences by name: the trainers of every method, loss functions for :func:`advlib.training.fit`
(purification in chapters 3-5, adversarial training in 6, 8 and 9, distillation in 7).
``advlib.defenses.build("purifier-kd", ...)``."""
from __future__ import annotations

from typing import Any

from torch import nn

from ..registry import Registry

DEFENSES: Registry[Any] = Registry("defense")


def build(name: str, /, **params: Any) -> Any:
    return DEFENSES.build(name, **params)


def names() -> list[str]:
    return DEFENSES.names()


def frozen(module: nn.Module) -> nn.Module:
    """``module`` in eval mode with its parameters no longer requiring gradients (in place), for the
    fixed classifiers and teachers that trainers hold: gradients still flow *through* it (to a
    purifier, or to an input), but none is computed for its weights."""
    return module.eval().requires_grad_(False)


from . import purification  # noqa: E402,F401  (registers the purification trainers)
from . import adversarial_training, awp, dynat  # noqa: E402,F401  (registers the adversarial trainers)
from . import fat, gairat, lbgat, mart  # noqa: E402,F401  (DYNAT's baselines in Table 1)
from . import dynat_reweighted, mail  # noqa: E402,F401  (MAIL and the reweighted DYNATs of Tables 3-4)
from . import distillation  # noqa: E402,F401  (registers the adversarial distillation trainers)
from . import soap  # noqa: E402,F401  (SOAP-RP, Table 1's self-supervised purifier)
from . import nrp  # noqa: E402,F401  (NRP, Table 1's feature-space purifier)
