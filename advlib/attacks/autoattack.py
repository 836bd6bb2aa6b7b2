"""AutoAttack (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", Sec. 5): a fixed ensemble of parameter-free attacks,
each run only on the points every earlier attack failed on; the reported robust accuracy is the
per-example worst case.

* ``version="standard"``: APGD-CE (1 run) → APGD-T (9 targets) → FAB-T (9 targets) → Square
  (5000 queries), 100 iterations each for the white-box attacks.
* ``version="rand"`` (randomised defences): APGD-CE → APGD-DLR, each with EOT over 20 forward passes.

``aa(model, x, y)`` returns the adversarial images (the :class:`Attack` contract);
``aa.run(model, x, y)`` also returns accuracies, the per-attack breakdown and the warnings of the
reference code's checks (``_checks.flag_*``).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from . import ATTACKS
from ._checks import (flag_dynamic, flag_randomized, flag_softmax, flag_square_beats_white_box, flag_targets,
                      flag_zero_gradients)
from .apgd import APGD, APGDTargeted
from .base import Attack
from .fab import FABTargeted
from .primitives import check_eps, check_norm, check_positive_ints
from .square import Square

VERSIONS = {"standard": ["apgd-ce", "apgd-t", "fab-t", "square"], "rand": ["apgd-ce", "apgd-dlr"]}


@dataclass
class AutoAttackResult:
    x_adv: torch.Tensor
    clean_accuracy: float
    robust_accuracy: float
    breakdown: list[tuple[str, float]]  # (attack, robust accuracy after it), in the order run
    flags: list[str] = field(default_factory=list)
    seconds: float = 0.0


@ATTACKS.register("autoattack")
class AutoAttack(Attack):
    """AutoAttack, standard or rand version, L∞ (default) or L2 (then FAB-T and Square are left
    out: this library implements them in L∞ only, so ``norm="L2"`` raises for "standard").

    ``batch_size`` of :meth:`run` bounds how many examples one attack call sees; ``max_batch`` how
    many (example, target) rows APGD-T and FAB-T put in one forward pass (default: by device).
    ``iterations`` (100), ``square_queries`` (5000) and ``n_target_classes`` (9) are the reference's
    budgets; cut them only where compute forces it (smoke runs, the quick profile's evaluations) and
    say so with the number.
    """

    def __init__(self, eps: float = 8 / 255, *, norm: str = "Linf", version: str = "standard",
                 n_target_classes: int = 9, iterations: int = 100, square_queries: int = 5000,
                 verbose: bool = False, max_batch: int | None = None, seed: int = 0,
                 bn_mode: str = "eval") -> None:
        check_eps(eps)
        check_norm(norm)
        if version not in VERSIONS:
            raise ValueError(f"unknown AutoAttack version {version!r}; known versions: {', '.join(VERSIONS)}")
        if version == "standard" and norm != "Linf":
            raise ValueError("the standard version needs FAB-T and Square, implemented here in L∞ only; "
                             "use norm='Linf'")
        check_positive_ints(n_target_classes=n_target_classes, iterations=iterations, square_queries=square_queries)
        super().__init__(seed=seed, bn_mode=bn_mode)
        self.eps, self.norm, self.version, self.verbose = eps, norm, version, verbose
        self.n_target_classes, self.max_batch = n_target_classes, max_batch
        self.iterations, self.square_queries = iterations, square_queries

    def attacks(self) -> dict[str, Attack]:
        """The ensemble, in order, with the reference's settings for this version."""
        common = {"eps": self.eps, "max_batch": self.max_batch, "n_iter": self.iterations}
        if self.version == "rand":
            return {"apgd-ce": APGD(norm=self.norm, loss="ce", eot_iter=20, **common),
                    "apgd-dlr": APGD(norm=self.norm, loss="dlr", eot_iter=20, **common)}
        return {"apgd-ce": APGD(norm=self.norm, loss="ce", n_restarts=1, **common),
                "apgd-t": APGDTargeted(norm=self.norm, n_target_classes=self.n_target_classes, **common),
                "fab-t": FABTargeted(n_target_classes=self.n_target_classes, **common),
                "square": Square(eps=self.eps, n_queries=self.square_queries, p_init=0.8)}

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        return self._evaluate(model, x, y, generator, batch_size=max(len(x), 1)).x_adv

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 500,
            generator: torch.Generator | None = None) -> AutoAttackResult:
        """Evaluate ``model`` on (x, y): adversarial images, clean and robust accuracy, the robust
        accuracy after each attack, and the checks' warnings."""
        check_positive_ints(batch_size=batch_size)
        with self.prepared(model, x, y, generator) as generator:
            result = self._evaluate(model, x.detach(), y, generator, batch_size)
        result.x_adv = result.x_adv.detach().to(dtype=x.dtype)
        return result

    def _say(self, message: str) -> None:
        if self.verbose:
            print(message, flush=True)

    def _model_flags(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> list[str]:
        flags = []
        if self.version != "rand":  # a randomised model is what "rand" is for
            flags.append(flag_randomized(model, x, y))
        flags.append(flag_softmax(logits))
        flags.append(flag_dynamic(model, x))
        n_classes = logits.shape[1]
        flags.append(flag_targets(n_classes, VERSIONS[self.version], self.n_target_classes, self.n_target_classes))
        return [flag for flag in flags if flag is not None]

    def _evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
                  batch_size: int) -> AutoAttackResult:
        started = time.time()
        n = len(x)
        with torch.no_grad():
            logits = torch.cat([model(x[i:i + batch_size]) for i in range(0, n, batch_size)]) if n else None
        flags = self._model_flags(model, x[:batch_size], y[:batch_size], logits[:batch_size]) if n else []
        robust = logits.argmax(1) == y if n else torch.zeros(0, dtype=torch.bool, device=x.device)
        x_adv = x.clone()
        clean_accuracy = robust.float().mean().item()  # nan for no images: nothing was measured
        self._say(f"AutoAttack ({self.version}, {self.norm}, eps={self.eps:.5g}) on {n} examples: "
                  f"clean accuracy {clean_accuracy:.2%}")
        breakdown: list[tuple[str, float]] = []
        zero_gradient = torch.zeros(n, dtype=torch.bool, device=x.device)
        for name, attack in self.attacks().items():
            todo = robust.nonzero().flatten()
            for start in range(0, len(todo), batch_size):
                index = todo[start:start + batch_size]
                if isinstance(attack, APGD):
                    outcome = attack.attack(model, x[index], y[index], generator)
                    candidate = outcome.x_adv
                    if attack.loss != "ce":  # the reference checks gradients of the DLR losses
                        zero_gradient[index] |= outcome.zero_gradient
                else:
                    candidate = attack.perturb(model, x[index], y[index], generator)
                with torch.no_grad():
                    fooled = model(candidate).argmax(1) != y[index]
                x_adv[index[fooled]] = candidate[fooled]
                robust[index[fooled]] = False
            accuracy = robust.float().mean().item()
            breakdown.append((name, accuracy))
            self._say(f"  robust accuracy after {name}: {accuracy:.2%} ({time.time() - started:.1f} s)")
        flags.append(flag_zero_gradients(zero_gradient, "the DLR-loss attacks"))
        flags.append(flag_square_beats_white_box(breakdown))
        flags = [flag for flag in flags if flag is not None]
        for flag in flags:
            warnings.warn(f"AutoAttack: {flag}", stacklevel=3)
            self._say(f"  WARNING: {flag}")
        robust_accuracy = robust.float().mean().item()
        self._say(f"AutoAttack robust accuracy: {robust_accuracy:.2%}")
        return AutoAttackResult(x_adv, clean_accuracy, robust_accuracy, breakdown, flags, time.time() - started)
