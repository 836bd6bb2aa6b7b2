"""Chapter 7: adversarial distillation — the robust teacher, the students of ARD, RSLAD, AdaAD, IGDM
and SAAD (Lee & Chung 2026), their evaluation with the transfer rate, and SAAD's per-sample weights."""
from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from .. import attacks, cache, defenses, distributed, paths
from ..config import Run, prepare_model
from ..evaluation import reporting, robustness_outcomes
from ..training import fit
from .adversarial_training import adversarial_training_config, adversarially_trained
from .common import Method, autoattack_examples, held_out_robustness, network, test_set, training_data

DISTILLATION_METHODS: dict[str, Method] = {m.name: m for m in (
    Method("standard", "Standard student (no teacher)", "standard"),
    Method("ard", "ARD", "ard", "ard"),
    Method("rslad", "RSLAD", "rslad", "rslad"),
    Method("adaad", "AdaAD", "adaad", "adaad"),
    Method("igdm", "IGDM (on AdaAD)", "igdm", "igdm"),
    Method("saad", "SAAD", "saad", "saad"),
)}
DISTILLED = [name for name in DISTILLATION_METHODS if name != "standard"]
TEACHER_LABEL = "Teacher"

DISTILLATION_COLUMNS = ("clean", "FGSM", "PGD-20", "CW", "AA")

_DISTILLATION_TRAINING_KEYS = ("student", "normalize", "train_subset", "holdout", "batch_size", "epochs",
                               "augment", "optimizer", "schedule")


def distillation_teacher_config(run: Run) -> dict[str, Any]:
    """What determines the teacher: chapter 6's method ``teacher`` under this profile, or the
    RobustBench model named by ``robustbench_teacher``."""
    spec = run.config["distillation"]
    if spec["robustbench_teacher"]:
        return {"robustbench": spec["robustbench_teacher"], "dataset": run.dataset}
    return adversarial_training_config(run, spec["teacher"])


def robustbench_model(name: str, dataset: str) -> nn.Module:
    """A RobustBench L∞ model by name (it normalises its input itself). Needs the ``robustbench``
    package and, the first time, the network: the weights are downloaded into the advlib cache."""
    try:
        from robustbench.utils import load_model
    except ImportError as error:
        raise ImportError("robustbench_teacher needs the robustbench package: "
                          "pip install git+https://github.com/RobustBench/robustbench ; or leave "
                          "robustbench_teacher empty to train the teacher of chapter 6") from error
    if dataset not in ("cifar10", "cifar100"):
        raise ValueError(f"RobustBench has L-inf models for cifar10 and cifar100, not {dataset!r}")
    try:
        return load_model(model_name=name, dataset=dataset, threat_model="Linf",
                          model_dir=str(paths.cache_dir() / "robustbench"))
    except Exception as error:
        raise RuntimeError(f"could not load the RobustBench model {name!r} for {dataset} ({error}); its weights "
                           "are downloaded on first use, so this needs the network once") from error


def distillation_teacher(run: Run) -> nn.Module:
    """The robust teacher of chapter 7, in eval mode: chapter 6's model (trained if not cached) or a
    RobustBench model."""
    spec = run.config["distillation"]
    if spec["robustbench_teacher"]:
        return prepare_model(robustbench_model(spec["robustbench_teacher"], run.dataset), run.device).eval()
    return adversarially_trained(run, spec["teacher"])[0]


def distillation_config(run: Run, method: str, seed: int | None = None) -> dict[str, Any]:
    """Everything that determines the weights of the student of ``method`` (a key of
    :data:`DISTILLATION_METHODS`) under ``run``'s profile; ``seed`` seeds the student alone
    (:func:`distilled_student`)."""
    if method not in DISTILLATION_METHODS:
        raise ValueError(f"unknown distillation method {method!r}; known methods: {', '.join(DISTILLATION_METHODS)}")
    spec = run.config["distillation"]
    recipe = DISTILLATION_METHODS[method]
    config = {"method": method, "dataset": run.dataset, "seed": run.seed,
              **{k: spec[k] for k in _DISTILLATION_TRAINING_KEYS}}
    if spec.get("images_per_epoch"):
        config["images_per_epoch"] = spec["images_per_epoch"]
    if recipe.section is not None:
        options = {**spec["train_attack"], **spec[recipe.section], **recipe.fixed}
        if method in ("igdm", "saad"):
            options["epochs"] = spec["epochs"]
            options["igdm_weight"] = spec["igdm_weight_by_dataset"].get(run.dataset, options["igdm_weight"])
        config["teacher"] = distillation_teacher_config(run)
        config["trainer_options"] = options
    config["averaging"] = spec["averaging"] if method == "saad" or spec["average_baselines"] else None
    if seed is not None and seed != run.seed:
        config["student_seed"] = seed
    return config


def distillation_trainer(run: Run, method: str, teacher: nn.Module, seed: int | None = None) -> Any:
    """The trainer of ``method`` with the profile's options, distilling from ``teacher``; ``seed``
    (default the run's) seeds its attacks' random starts."""
    config = distillation_config(run, method)
    seed = run.seed if seed is None else seed
    if "trainer_options" not in config:
        return defenses.build(DISTILLATION_METHODS[method].trainer, seed=seed)
    return defenses.build(DISTILLATION_METHODS[method].trainer, teacher=teacher, **config["trainer_options"],
                          seed=seed)


def distilled_student(run: Run, method: str, seed: int | None = None) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The student of ``method`` in eval mode (SAAD's is the SWA average), with its per-epoch history:
    training loss/accuracy, held-out clean and PGD-10 accuracy and ``val_transfer``, the
    :func:`~advlib.evaluation.protocols.transfer_rate` of the student's held-out PGD-10 examples
    (crafted on the images it classifies correctly) to the teacher; for SAAD also its
    :meth:`~advlib.defenses.distillation.SAAD.epoch_statistics`.

    ``seed`` (default the run's) seeds the student alone — its initial weights, the order of its
    batches and its attacks' random starts — while the teacher and the training images stay the
    run's: retraining with other seeds shows how much of a result is seed noise (chapter 7)."""
    config = distillation_config(run, method, seed)
    spec = run.config["distillation"]
    student_seed = config.get("student_seed", run.seed)
    def build(initialise: bool) -> nn.Module:
        return network(run, "student", seed=student_seed, initialise=initialise)

    def train(model: nn.Module, checkpoint) -> list[dict[str, Any]]:
        teacher = distillation_teacher(run)
        loader, x_val, y_val = training_data(run, config, shuffle_seed=student_seed)
        val_attack = attacks.build("pgd", steps=10, **spec["eval_attack"], seed=run.seed)
        return fit(model, loader, epochs=config["epochs"], optimizer=config["optimizer"],
                   schedule=config["schedule"], loss_fn=distillation_trainer(run, method, teacher, student_seed),
                   checkpoint=checkpoint, desc=method, averaging=config["averaging"], sync_batchnorm=run.sync_batchnorm,
                   evaluate=lambda student: held_out_robustness(student, x_val, y_val, val_attack, teacher))

    launch = distributed.launcher(run, "distilled", method, *([] if seed is None else [seed]))
    model, history = cache.load_or_train(f"distilled-{method}", config, build, train, launch=launch)
    return model.eval(), history


def distillation_outcomes(run: Run, method: str, seed: int | None = None) -> dict[str, torch.Tensor]:
    """Per test image, for ``"teacher"`` or a student of :data:`DISTILLATION_METHODS`: correct clean
    and under FGSM, PGD-20 and CW-∞ (each on its own, on the profile's ``eval_subset`` test images),
    under AutoAttack (standard) on the first ``autoattack_subset`` with PGD-20 on the same images,
    and for students ``transfer``: for each of the student's PGD-20 examples that fools it (crafted
    on an image it classifies correctly), whether it fools the teacher too
    (:func:`~advlib.evaluation.protocols.robustness_outcomes`); ``seed``: the student of that seed
    (:func:`distilled_student`). Cached like a trained model."""
    spec = run.config["distillation"]
    evaluation = spec["evaluation"]
    model_config = (distillation_teacher_config(run) if method == "teacher"
                    else distillation_config(run, method, seed))
    config = {"model": model_config, "teacher": distillation_teacher_config(run), **evaluation,
              "eval_attack": spec["eval_attack"]}

    def compute() -> dict[str, torch.Tensor]:
        teacher = distillation_teacher(run)
        model = teacher if method == "teacher" else distilled_student(run, method, seed)[0]
        x, y = test_set(run, evaluation["eval_subset"])
        eps, alpha = spec["eval_attack"]["eps"], spec["eval_attack"]["alpha"]
        named = {"FGSM": attacks.build("fgsm", eps=eps),
                 "PGD-20": attacks.build("pgd", eps=eps, alpha=alpha, steps=20, seed=run.seed),
                 "CW": attacks.build("cw-linf", eps=eps, alpha=alpha, steps=evaluation["cw_steps"],
                                     restarts=evaluation["cw_restarts"], seed=run.seed)}
        x_aa = autoattack_examples(run, model_config, lambda: model, eps, evaluation)
        return robustness_outcomes(model, x, y, named, x_aa, transfer_to=None if method == "teacher" else teacher)

    return cache.load_or_compute("distillation-evaluation", config, compute)


def distillation_evaluation(run: Run, method: str) -> dict[str, Any]:
    """One row of the SAAD comparison (:func:`distillation_outcomes`): each column's fraction with
    its 95 % interval and how many images it saw; ``transfer`` is the transfer rate to the teacher."""
    label = TEACHER_LABEL if method == "teacher" else DISTILLATION_METHODS[method].label
    return reporting.outcome_row(distillation_outcomes(run, method), label)


def seed_spread(run: Run) -> list[dict[str, Any]]:
    """The profile's ``seed_spread`` method (SAAD) retrained with ``seeds`` student seeds (the run's
    seed and the next ones; the teacher and the training images stay the run's), one evaluation
    row per seed (:func:`distillation_evaluation`, labelled with the seed)."""
    spread = run.config["distillation"]["seed_spread"]
    method = spread["method"]
    label = DISTILLATION_METHODS[method].label
    return [reporting.outcome_row(distillation_outcomes(run, method, run.seed + k), f"{label}, seed {run.seed + k}")
            for k in range(spread["seeds"])]


def distillation_table(run: Run) -> dict[str, dict[str, Any]]:
    """The teacher's row and every student's (:func:`distillation_evaluation`), by method, written to
    ``distillation.json`` (every accuracy a fraction in [0, 1])."""
    rows = {method: distillation_evaluation(run, method) for method in ("teacher", *DISTILLATION_METHODS)}
    run.save_results("distillation", list(rows.values()))
    return rows


def teacher_passes(run: Run, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[dict[str, Any]]:
    """For every distillation method, one training step of a fresh student on ``(x, y)``: its loss,
    how many forward passes of the teacher it took, and its wall time in milliseconds."""
    calls: list[int] = []
    hook = teacher.register_forward_hook(lambda *_: calls.append(1))
    rows = []
    try:
        for method in DISTILLED:
            trainer = distillation_trainer(run, method, teacher)
            calls.clear()
            started = time.perf_counter()
            loss, _ = trainer(network(run, "student").train(), x, y, epoch=0)
            loss.backward()
            rows.append({"method": DISTILLATION_METHODS[method].label, "loss": loss.item(),
                         "teacher passes": len(calls), "ms": 1000 * (time.perf_counter() - started)})
    finally:
        hook.remove()
    return rows


def saad_weights(run: Run, student: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """SAAD's per-sample weights w for ``student`` on ``(x, y)``, computed batch by batch as in
    training (:meth:`~advlib.defenses.distillation.SAAD.sample_weights`), and whether each x' fools
    the teacher; both on the CPU."""
    saad = distillation_trainer(run, "saad", teacher)
    size = run.config["distillation"]["batch_size"]
    looks = [saad.sample_weights(student, x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]
    return (torch.cat([look["weight"] for look in looks]).cpu(),
            torch.cat([look["fools_teacher"] for look in looks]).cpu())
