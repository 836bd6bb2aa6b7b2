"""Chapters 10 and 11: every defence of the book under one adaptive evaluation — the purifier under
each threat model (chapter 10) next to the adversarially trained and the distilled models — the
evaluation checklist run on each, and one leaderboard with confidence intervals and paired tests
(chapter 11)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .. import attacks, cache, models
from ..config import Run
from ..evaluation import Purified, robust_accuracy, sanity
from ..evaluation.protocols import PURIFIER_THREATS, crafted_on, folded, threat_outcomes
from ..evaluation.reporting import fraction_with_interval
from ..evaluation.statistics import mcnemar_exact
from .adversarial_training import AT_METHODS, adversarial_training_config, adversarially_trained, chapter_of
from .classifier import classifier, classifier_config
from .common import autoattack_examples, autoattack_key, test_set
from .distillation import DISTILLATION_METHODS, distillation_config, distilled_student
from .purification import (nrp_config, nrp_purifier, purifier_config, purifier_student, purifier_teacher, soap_purifier,
                           soap_purifier_config)


@dataclass(frozen=True)
class Defence:
    """A model of the book as the leaderboard sees it: its ``name``, the ``chapter`` that trains it,
    how to ``load`` it, what determines it (``config``, for the cache) and its ``history``."""

    name: str
    chapter: int
    load: Callable[[], nn.Module]
    config: dict[str, Any]
    history: Callable[[], list[dict[str, Any]]]


def defences(run: Run) -> dict[str, Defence]:
    """Every model the book trains, by key: the undefended classifier, the purifier (chapter 5), the
    adversarially trained models (chapters 6, 8 and 9) and the distilled students (chapter 7, whose
    teacher is chapter 6's TRADES model)."""
    entries = [Defence(UNDEFENDED, 1, lambda: classifier(run)[0], classifier_config(run),
                       lambda: classifier(run)[1])]

    entries.append(Defence(PURIFIER, 5, lambda: Purified(purifier_student(run)[0], classifier(run)[0]).eval(),
                           purifier_config(run, "student-at-nt"),
                           lambda: purifier_student(run)[1]))
    entries.append(Defence(PURIFIER_TEACHER, 4, lambda: Purified(purifier_teacher(run, "at")[0], classifier(run)[0]).eval(),
                           purifier_config(run, "teacher-at"),
                           lambda: purifier_teacher(run, "at")[1]))
    entries.append(Defence(SOAP, 5, lambda: Purified(soap_purifier(run)[0], classifier(run)[0]).eval(),
                           {**soap_purifier_config(run), "classifier": classifier_config(run)},
                           lambda: soap_purifier(run)[1]))
    entries.append(Defence(NRP, 5, lambda: Purified(nrp_purifier(run)[0], classifier(run)[0]).eval(),
                           {**nrp_config(run), "classifier": classifier_config(run)},
                           lambda: nrp_purifier(run)[1]))
    for key, method in AT_METHODS.items():
        entries.append(Defence(method.label, chapter_of(key),
                               (lambda key=key: adversarially_trained(run, key)[0]),
                               adversarial_training_config(run, key), (lambda key=key: adversarially_trained(run, key)[1])))
    for key, method in DISTILLATION_METHODS.items():
        entries.append(Defence(f"student: {method.label}", 7, (lambda key=key: distilled_student(run, key)[0]),
                               distillation_config(run, key), (lambda key=key: distilled_student(run, key)[1])))
    return {entry.name: entry for entry in entries}


UNDEFENDED = "undefended classifier"
PURIFIER = "purifier (student of AT and NT)"
PURIFIER_TEACHER = "purifier (AT teacher)"
SOAP = "SOAP-RP purifier"
NRP = "NRP purifier"
# the purifiers, ranked at the ε they were trained for (chapter 5's)
PURIFIERS = (PURIFIER, PURIFIER_TEACHER, SOAP, NRP)
THREATS = PURIFIER_THREATS


def threats_of(name: str) -> tuple[str, ...]:
    """The threat models the leaderboard scores a defence under: all four for the purifier and for
    NRP (its published break is BPDA: Cao et al., ICLR 2024); for the purifier's
    AT teacher all but BPDA (P is differentiable, so BPDA only shows the mechanism, which the
    student's row does; it would cost the quick profile one more AutoAttack through f∘P); for SOAP
    all but BPDA too (its sign steps have zero derivative, so autograd through it already is BPDA:
    :class:`~advlib.defenses.soap.SOAPPurifier`); white-box for every other defence."""
    if name in (PURIFIER, NRP):
        return THREATS
    if name in (PURIFIER_TEACHER, SOAP):
        return tuple(threat for threat in THREATS if threat != "BPDA")
    return ("white-box",)


def adversarial_examples(run: Run, name: str, eps: float, bpda: bool = False) -> torch.Tensor:
    """AutoAttack's examples of the leaderboard's test images crafted white-box on the defence
    ``name`` (with ``bpda``, on a purifier's BPDA version): :func:`~.common.autoattack_examples` with the
    ``leaderboard`` section's budgets. Every threat model that attacks through the same model reuses
    them (the gray-box examples are the undefended classifier's, the transfer examples PGD-AT's).
    Quiet: :func:`precompute` reports what chapters 10 and 11 computed."""
    entry = defences(run)[name]
    return autoattack_examples(run, entry.config, entry.load, eps, run.config["leaderboard"], bpda, verbose=False)


def attack_source(name: str, threat: str) -> tuple[str, bool]:
    """The defence whose AutoAttack examples the threat model ``threat`` scores ``name`` on, and
    whether they are crafted on its BPDA version: the defence itself (white-box, BPDA), the
    undefended classifier (gray-box) or chapter 6's PGD-AT model (transfer)."""
    return {"white-box": (name, False), "gray-box": (UNDEFENDED, False), "BPDA": (name, True),
            "transfer": (AT_METHODS["pgd_at"].label, False)}[threat]


def outcomes(run: Run, name: str, eps: float) -> dict[str, dict[str, torch.Tensor]]:
    """For each of :func:`threats_of` ``name``, per test image (the leaderboard's ``eval_subset``):
    correct clean, and still correct after AutoAttack (standard) crafted under that threat model
    (:func:`~advlib.evaluation.protocols.threat_outcomes`; transfer from chapter 6's PGD-AT model)."""
    model = defences(run)[name].load()
    x, y = test_set(run, run.config["leaderboard"]["eval_subset"])
    examples = {}
    for threat in threats_of(name):
        source, bpda = attack_source(name, threat)
        examples[threat] = adversarial_examples(run, source, eps, bpda)
    return threat_outcomes(model, x, y, examples)


def training_cost(history: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds and forward passes (with gradients) of a training, from its per-epoch history."""
    return {"train_seconds": round(sum(r.get("seconds", 0.0) for r in history), 1),
            "train_passes": int(sum(r.get("passes_with_grad", 0) for r in history))}


def leaderboard_rows(run: Run, eps: float) -> list[tuple[str, str]]:
    """The (defence, threat model) pairs of the leaderboard at ``eps``: each defence under
    :func:`threats_of` it, the purifiers at the ε they were trained for only (chapter 5's). At that
    ε the other defences are those the ``leaderboard`` section's ``compared_at_purifier_eps`` names
    (every one when it is None), and always the undefended classifier."""
    purifier_eps = run.config["purification"]["train_attack"]["eps"]
    at_purifier_eps = abs(eps - purifier_eps) < 1e-9
    names = list(defences(run))
    compared = run.config["leaderboard"].get("compared_at_purifier_eps")
    if compared is not None:
        unknown = [name for name in compared if name not in names]
        if unknown:
            raise ValueError(f"leaderboard.compared_at_purifier_eps names unknown defence(s) {unknown}; "
                             f"the book's defences are {names}")

    def ranked(name: str) -> bool:
        if name in PURIFIERS:
            return at_purifier_eps
        return not at_purifier_eps or compared is None or name == UNDEFENDED or name in compared

    return [(name, threat) for name in names if ranked(name) for threat in threats_of(name)]


def leaderboard(run: Run) -> list[dict[str, Any]]:
    """One row per defence, threat model and ε of the profile (:func:`leaderboard_rows`): clean and
    AutoAttack accuracy with 95 % Wilson intervals, n, the exact McNemar p-value against the best
    white-box row of the same ε (same images), the parameter count and the training cost. Written to
    ``leaderboard.json``."""
    spec = run.config["leaderboard"]
    rows = []
    entries = defences(run)
    for eps in spec["epsilons"]:
        measured = []
        for name in dict.fromkeys(name for name, _ in leaderboard_rows(run, eps)):
            entry = entries[name]
            about = {"parameters": models.count_parameters(entry.load()), **training_cost(entry.history())}
            for threat, outcome in outcomes(run, name, eps).items():
                clean, robust = outcome["clean"], outcome["robust"]
                row = {"defense": name, "chapter": entry.chapter, "threat": threat, "eps": eps}
                row["clean"], row["clean_ci95"] = fraction_with_interval(clean)
                row["autoattack"], row["autoattack_ci95"] = fraction_with_interval(robust)
                row.update(n_autoattack=len(robust), **about)
                measured.append((row, robust))
        # only a defence's white-box row is its robustness; the weaker threat models do not compete
        best_row, best_robust = max((pair for pair in measured if pair[0]["threat"] == "white-box"),
                                    key=lambda pair: pair[0]["autoattack"])
        for row, robust in measured:
            row["p_vs_best"] = mcnemar_exact(robust, best_robust)
            row["best"] = row is best_row
            rows.append(row)
    run.save_results("leaderboard", rows)
    return rows


def checklist_budget(run: Run, name: str) -> float:
    """The ε the checklist attacks ``name`` at: the one it was trained for (chapter 5's for the
    purifiers, the adversarial chapters' for the others)."""
    if name in PURIFIERS:
        return run.config["purification"]["train_attack"]["eps"]
    return run.config["leaderboard"]["epsilons"][-1]


def checklist_key(run: Run, name: str) -> dict[str, Any]:
    """What determines the attacks behind :func:`checklist` (its cache key)."""
    spec = run.config["leaderboard"]
    return {"defence": defences(run)[name].config, "name": name, "eps": checklist_budget(run, name),
            **{k: spec[k] for k in ("check_subset", "check_steps", "large_eps", "check_square_queries")}}


def checklist_attacks(run: Run, name: str) -> dict[str, torch.Tensor]:
    """Per test image, whether ``name`` withstands each attack of :func:`checklist` (and the iterative
    attack's examples), computed once and cached."""
    spec = run.config["leaderboard"]
    eps = checklist_budget(run, name)

    def compute() -> dict[str, torch.Tensor]:
        model = folded(defences(run)[name].load())
        x, y = test_set(run, spec["check_subset"])
        alpha, steps = eps / 4, spec["check_steps"]
        named = {"single step": attacks.build("fgsm", eps=eps),
                 "iterative": attacks.build("pgd", eps=eps, alpha=alpha, steps=steps, seed=run.seed),
                 "stronger": attacks.build("pgd", eps=eps, alpha=alpha, steps=2 * steps, restarts=2, seed=run.seed + 1),
                 "black-box": attacks.build("square", eps=eps, n_queries=spec["check_square_queries"], seed=run.seed),
                 "large eps": attacks.build("pgd", eps=spec["large_eps"], alpha=spec["large_eps"] / 4, steps=steps,
                                            seed=run.seed)}
        report = robust_accuracy(model, x, y, named, cascade=False, keep_adversarial=("iterative",))
        standard = adversarially_trained(run, "standard")[0]
        transferred = crafted_on(standard, model, x, y, named["iterative"])
        return {"clean": report.clean, **{k: v for k, v in report.per_attack.items()},
                "transfer": transferred["robust"], "x": x.cpu(), "y": y.cpu(), "x_adv": report.adversarial["iterative"]}

    return cache.load_or_compute("leaderboard-checklist", checklist_key(run, name), compute, verbose=False)


def checklist(run: Run, name: str) -> list[dict[str, Any]]:
    """Carlini et al.'s checklist (:mod:`advlib.evaluation.sanity`) for one defence, attacked
    white-box, on the leaderboard's ``check_subset`` test images at the budget the defence was trained
    for (:func:`checklist_budget`). The iterative attack is PGD with ``check_steps`` steps of ε/4
    (20), the stronger one twice the steps with 2 restarts, the single step FGSM and the black-box
    one Square."""
    spec = run.config["leaderboard"]
    result = checklist_attacks(run, name)
    model = defences(run)[name].load()
    correct = result["clean"]
    masking = sanity.gradient_masking(model, result["x"][correct].to(run.device),
                                      result["y"][correct].to(run.device), result["x_adv"][correct].to(run.device))
    rows = [sanity.reaches_zero(result["large eps"], spec["large_eps"]),
            sanity.iterative_beats_single_step(result["single step"], result["iterative"]),
            sanity.white_box_beats_black_box(result["iterative"], result["black-box"]),
            sanity.converged(result["iterative"], result["stronger"]),
            sanity.transfer_weaker_than_white_box(result["iterative"], result["transfer"]), masking]
    return [{"defense": name, "eps": checklist_budget(run, name), **row} for row in rows]


def evaluation_jobs(run: Run, names: Iterable[str] | None = None, checklists: bool = True) -> list[tuple[Any, ...]]:
    """What chapters 10 and 11 compute, each once: ``("examples", defence, eps, bpda)`` for every
    AutoAttack run that the leaderboard's rows of the defences ``names`` (all of them when None)
    score (:func:`attack_source`), and, with ``checklists``, ``("checklist", defence)`` for each of
    those defences."""
    known = list(defences(run))
    chosen = known if names is None else list(names)
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise ValueError(f"unknown defence(s) {unknown}; the book's defences are {known}")
    jobs: list[tuple[Any, ...]] = []
    for eps in run.config["leaderboard"]["epsilons"]:
        for name, threat in leaderboard_rows(run, eps):
            if name in chosen:
                source, bpda = attack_source(name, threat)
                jobs.append(("examples", source, eps, bpda))
    if checklists:
        jobs += [("checklist", name) for name in chosen]
    return list(dict.fromkeys(jobs))


def job_path(run: Run, job: tuple[Any, ...]) -> Path:
    """Where the cache keeps the result of a job of :func:`evaluation_jobs`."""
    if job[0] == "checklist":
        return cache.artifact_path("leaderboard-checklist", checklist_key(run, job[1]))
    _, name, eps, bpda = job
    return cache.artifact_path("autoattack-examples",
                               autoattack_key(run, defences(run)[name].config, eps, run.config["leaderboard"], bpda))


def precompute(run: Run, names: Iterable[str] | None = None, checklists: bool = True) -> str:
    """Compute what :func:`evaluation_jobs` lists for ``names`` and ``checklists`` and the cache
    lacks, the purifiers' jobs first (they cost the most), without a line per model loaded (a model
    that has to be trained first still reports); the chapter's later cells load the results. Returns
    a one-line summary. (Two worker processes of one thread each took longer than this one process
    with two threads: 365 s against 309 s for the quick profile's jobs on two cores.)"""
    jobs = evaluation_jobs(run, names, checklists)
    todo = [job for job in jobs if not job_path(run, job).exists()]
    started = time.time()
    todo.sort(key=lambda job: (job[1] not in PURIFIERS, job[0] == "checklist"))
    with cache.quietly():
        for job in todo:
            if job[0] == "checklist":
                checklist_attacks(run, job[1])
            else:
                adversarial_examples(run, job[1], job[2], job[3])
    what = "AutoAttack runs and checklists" if checklists else "AutoAttack runs"
    if not todo:
        return f"all {len(jobs)} evaluations of this chapter ({what}) came from the cache"
    return (f"computed {len(todo)} of the chapter's {len(jobs)} evaluations ({what}) in "
            f"{time.time() - started:.0f} s; {len(jobs) - len(todo)} came from the cache")
