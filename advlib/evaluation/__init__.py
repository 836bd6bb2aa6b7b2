"""Evaluation, in one package: what a model predicts (``prediction``), how robust it is under a list
of attacks (``robustness``), who the attacker may see (``protocols``: gray-box, white-box through a
purifier, transfer), and how results are reported (``reporting``)."""
from __future__ import annotations

from .prediction import accuracy, confusion_matrix, per_class_accuracy, predict  # noqa: F401
from .robustness import RobustnessReport, robust_accuracy, shared_trajectories  # noqa: F401
from . import protocols, reporting, sanity, statistics  # noqa: E402,F401
from .protocols import (PURIFIER_THREATS, BPDAPurified, NoisyPurifier, Purified, crafted_on,  # noqa: E402,F401
                        folded, gray_box, purifier_threats, robustness_outcomes, threat_outcomes,
                        threat_sources, transfer_outcomes, transfer_rate, white_box)
