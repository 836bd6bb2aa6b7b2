"""Adversarial attacks behind one registry: ``advlib.attacks.build("pgd", eps=8/255, ...)``.

Every attack is called as ``attack(model, x, y) -> x_adv`` on images in [0, 1]; see :class:`Attack`.
One attack per module, the shared input checks in ``_checks`` (the layout of the original
AutoAttack code).
"""
from __future__ import annotations

from ..registry import Registry
from .base import Attack

ATTACKS: Registry[Attack] = Registry("attack")


def build(name: str, **params) -> Attack:
    """Build a registered attack by name; unknown names raise an error that lists the known ones."""
    return ATTACKS.build(name, **params)


def names() -> list[str]:
    return ATTACKS.names()

from . import apgd, autoattack, bim, cw, cw_linf, evaluate, fab, fgsm, pgd, square  # noqa: E402,F401  (registers the attacks)
