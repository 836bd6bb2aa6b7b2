"""Adversarial attacks behind one registry: ``advlib.attacks.build("pgd", eps=8/255, ...)`` (chapter 2).

Every attack is called as ``attack(model, x, y) -> x_adv`` on images in [0, 1]; see :class:`Attack`.
One attack per module, the pieces they share in ``primitives`` (checks, projections, gradients,
signed ascent, the margin, restarts), AutoAttack's checks of a model in ``_checks`` (the layout of
the original AutoAttack code).
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

from . import primitives  # noqa: E402,F401
from . import apgd, autoattack, bim, cw, cw_linf, fab, fgsm, pgd, square  # noqa: E402,F401  (registers the attacks)
