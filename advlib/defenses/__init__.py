"""Defences by name: trainers (loss functions for :func:`advlib.training.fit`) and the wrappers
that put a defence in front of a classifier. ``advlib.defenses.build("purifier-kd", ...)``."""
from __future__ import annotations

from typing import Any

from ..registry import Registry

DEFENSES: Registry[Any] = Registry("defense")


def build(name: str, /, **params: Any) -> Any:
    return DEFENSES.build(name, **params)


def names() -> list[str]:
    return DEFENSES.names()


from . import purification  # noqa: E402,F401  (registers the purification trainers)
from . import adversarial_training, awp, dynat  # noqa: E402,F401  (registers the adversarial trainers)
from . import distillation  # noqa: E402,F401  (registers the adversarial distillation trainers)
