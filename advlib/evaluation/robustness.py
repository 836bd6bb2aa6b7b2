"""Robust accuracy under a list of attacks, batched, with the per-example worst case (chapter 2).

An example counts as robust only if it is classified correctly clean *and* after every attack
(as in AutoAttack, Croce & Hein 2020: the worst case over attacks is taken per example, never per
attack).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ..attacks.base import Attack
from ..attacks.pgd import PGD
from ..attacks.primitives import RANGE_TOLERANCE, check_inputs, check_labels
from .prediction import predict

# An L∞ attack may overshoot its budget by float rounding (x + ε − x ≠ ε), never by more.
EPS_TOLERANCE = 1e-6


@dataclass
class RobustnessReport:
    """Per-example outcomes of :func:`robust_accuracy`; every mask is a bool tensor of shape (N,) on the CPU.

    * ``clean``: classified correctly without attack.
    * ``per_attack[name]``: still classified correctly after ``name``. With ``cascade=True`` an
      attack only sees the examples that survived the earlier ones, so this mask is "robust to
      this attack and every earlier one" (the running accuracy AutoAttack prints); with
      ``cascade=False`` it is the attack's own robust accuracy.
    * ``worst_case``: robust to every attack (and correct clean).
    * ``adversarial[name]``: for the attacks named in ``keep_adversarial``, the inputs after the
      attack (the clean image where it did not run), on the CPU.
    """

    clean: torch.Tensor
    per_attack: dict[str, torch.Tensor]
    worst_case: torch.Tensor
    attacked: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    cascade: bool = True
    adversarial: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def accuracies(self) -> dict[str, float]:
        """``{"clean": …, <attack>: …, "worst case": …}`` as fractions of all examples (nan for an
        evaluation on no images)."""
        def fraction(mask: torch.Tensor) -> float:
            return mask.sum().item() / len(mask) if len(mask) else float("nan")

        return {"clean": fraction(self.clean), **{name: fraction(mask) for name, mask in self.per_attack.items()},
                "worst case": fraction(self.worst_case)}

    def as_table(self) -> list[dict[str, Any]]:
        """One row per line of the report (clean, each attack, worst case), ready for printing or JSON."""
        n = len(self.clean)
        rows = [{"attack": "clean", "robust": int(self.clean.sum()), "n": n,
                 "accuracy": self.accuracies["clean"], "attacked": 0, "seconds": 0.0}]
        for name, mask in self.per_attack.items():
            rows.append({"attack": name, "robust": int(mask.sum()), "n": n, "accuracy": self.accuracies[name],
                         "attacked": self.attacked[name], "seconds": round(self.seconds[name], 3)})
        rows.append({"attack": "worst case", "robust": int(self.worst_case.sum()), "n": n,
                     "accuracy": self.accuracies["worst case"], "attacked": sum(self.attacked.values()),
                     "seconds": round(sum(self.seconds.values()), 3)})
        return rows

    def __str__(self) -> str:
        header = "after" if self.cascade else "under"
        lines = [f"{'':<14}{'accuracy':>9}{'attacked':>10}{'seconds':>9}"]
        for row in self.as_table():
            label = row["attack"] if row["attack"] in ("clean", "worst case") else f"{header} {row['attack']}"
            lines.append(f"{label:<14}{100 * row['accuracy']:8.2f}%{row['attacked']:>10}{row['seconds']:>9.1f}")
        return "\n".join(lines)


def _check_adversarial(name: str, attack: Attack, x: torch.Tensor, x_adv: torch.Tensor) -> None:
    # A broken attack that leaves the threat model would report fake "successes": refuse them.
    if x_adv.shape != x.shape:
        raise RuntimeError(f"attack {name!r} returned shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}")
    if x_adv.min() < -RANGE_TOLERANCE or x_adv.max() > 1 + RANGE_TOLERANCE:
        raise RuntimeError(f"attack {name!r} returned pixels outside [0, 1]")
    eps = getattr(attack, "eps", None)
    if isinstance(eps, (int, float)) and getattr(attack, "norm", "Linf") == "Linf":
        overshoot = (x_adv - x).abs().max().item() - eps
        if overshoot > EPS_TOLERANCE:
            raise RuntimeError(f"attack {name!r} left its L∞ ball: ‖δ‖∞ exceeds ε = {eps:.6g} "
                               f"by {overshoot:.3g}")


def shared_trajectories(named: Sequence[tuple[str, Attack]]) -> dict[str, list[tuple[str, PGD]]]:
    """Single-run PGD attacks of ``named`` that differ only in their number of steps
    (:meth:`~advlib.attacks.pgd.PGD.shares_trajectory_with`), grouped by the name of each group's
    first member, in increasing steps: one trajectory gives all their results. Groups of one are left out."""
    groups: list[list[tuple[str, PGD]]] = []
    for name, attack in named:
        if not isinstance(attack, PGD):
            continue
        group = next((g for g in groups if g[0][1].shares_trajectory_with(attack)), None)
        if group is None:
            groups.append([(name, attack)])
        else:
            group.append((name, attack))
    return {group[0][0]: sorted(group, key=lambda member: member[1].steps) for group in groups if len(group) > 1}


def _adversarial_batches(members: list[tuple[str, Attack]], model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         generator: torch.Generator) -> Iterator[torch.Tensor]:
    if len(members) == 1:
        yield members[0][1](model, x, y, generator=generator)
    else:
        yield from members[0][1].iterates(model, x, y, [attack.steps for _, attack in members], generator=generator)


def _measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, members: list[tuple[str, Attack]],
             eligible: torch.Tensor, keep_adversarial: Sequence[str],
             batch_size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor | None, float]]:
    """Per member of ``members`` (one attack, or PGDs along one trajectory), attacking the
    ``eligible`` images: who stays robust, the adversarial images if kept, and the seconds it cost
    (along a trajectory, the steps it added to the previous member's)."""
    device = next(model.parameters()).device
    robust = {name: eligible.clone() for name, _ in members}
    kept = {name: x.detach().cpu().clone() for name, _ in members if name in keep_adversarial}
    seconds = dict.fromkeys(robust, 0.0)
    generator = torch.Generator(device=device).manual_seed(members[0][1].seed)
    candidates = eligible.nonzero().flatten()
    for batch in candidates.split(batch_size) if len(candidates) else ():
        x_batch, y_batch = x[batch].to(device), y[batch].to(device)
        started = time.perf_counter()
        for (name, attack), x_adv in zip(members, _adversarial_batches(members, model, x_batch, y_batch, generator)):
            _check_adversarial(name, attack, x_batch, x_adv)
            robust[name][batch] = (predict(model, x_adv, batch_size).argmax(1) == y_batch).cpu()
            if name in kept:
                kept[name][batch] = x_adv.cpu()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            now = time.perf_counter()
            seconds[name] += now - started
            started = now
    return {name: (robust[name], kept.get(name), seconds[name]) for name, _ in members}


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    attacks: dict[str, Attack] | Sequence[tuple[str, Attack]], batch_size: int = 256,
                    cascade: bool = True, keep_adversarial: Sequence[str] = ()) -> RobustnessReport:
    """Attack ``model`` on ``(x, y)`` with each of ``attacks`` in order and report who survives.

    Examples misclassified clean are never attacked and never count as robust. With ``cascade``
    (the default, as in AutoAttack) each attack only runs on the examples every earlier attack
    failed on: the worst case is the same and the evaluation is cheaper, but the per-attack rows
    become cumulative. Each attack draws its randomness from one generator seeded by its ``seed``
    and shared by its batches, so the report is reproducible. Without ``cascade``, PGD attacks that
    differ only in their number of steps (DYNAT's PGD-10/20/50) are read off one trajectory
    (:func:`shared_trajectories`): the results of separate runs, for the cost of the longest. The
    adversarial examples of the attacks named in ``keep_adversarial`` are kept in the report (e.g.
    to test them on another model).
    """
    check_inputs(x, y)
    named = list(attacks.items()) if isinstance(attacks, dict) else list(attacks)
    names = [name for name, _ in named]
    if len(set(names)) != len(names):
        raise ValueError(f"attack names must be unique, got {names}")
    unknown = set(keep_adversarial) - set(names)
    if unknown:
        raise ValueError(f"keep_adversarial names attacks that are not run: {sorted(unknown)}; attacks: {names}")
    device = next(model.parameters()).device
    logits = predict(model, x, batch_size)
    check_labels(y, logits.shape[1])
    clean = (logits.argmax(1) == y.to(device)).cpu()
    survivors = clean.clone()
    report = RobustnessReport(clean, {}, survivors, cascade=cascade)
    shared = {} if cascade else shared_trajectories(named)
    measured: dict[str, tuple[torch.Tensor, torch.Tensor | None, float]] = {}
    for name, attack in named:
        eligible = survivors if cascade else clean
        if name not in measured:
            members = shared.get(name, [(name, attack)])
            measured.update(_measure(model, x, y, members, eligible, keep_adversarial, batch_size))
        robust, kept, seconds = measured.pop(name)
        report.seconds[name] = seconds
        report.attacked[name] = int(eligible.sum())
        report.per_attack[name] = robust
        if kept is not None:
            report.adversarial[name] = kept
        survivors = survivors & robust
    report.worst_case = survivors
    return report
