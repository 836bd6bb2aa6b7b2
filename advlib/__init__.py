"""advlib — the helper package of the book *Adversarial robustness via distillation*.

Modules: ``data`` (datasets, on-device loader), ``models``, ``attacks`` and ``defenses``
(registries by name), ``config`` (profiles, devices), ``training`` (the one training loop),
``cache`` (artifacts by config hash), ``recipes`` (the book's trained models), ``evaluation``,
``plots`` and ``widgets``.
"""
__version__ = "0.1.0"

from . import attacks, cache, config, data, defenses, evaluation, models, recipes, training  # noqa: E402,F401
from .config import setup  # noqa: E402,F401
