"""The book's trained artifacts, each "load if present, else train" under its configuration hash.

A notebook asks for what it needs (``recipes.classifier(run)``); whichever notebook runs first
trains it, every later one loads it, and each notebook still runs on its own.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from . import attacks, cache, data, defenses, models
from .attacks._checks import project_linf
from .config import Run, prepare_model
from .defenses.purification import Purified
from .evaluation import accuracy, predict
from .training import fit


def classifier_config(run: Run) -> dict[str, Any]:
    """Everything that determines the chapter-01 classifier's weights."""
    return {"dataset": run.dataset, "seed": run.seed, **run.config["classifier"]}


def classifier(run: Run) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The standard-trained classifier of chapter 01 (ResNet56 on CIFAR-10 in the paper profile),
    in eval mode, with its per-epoch history (training loss/accuracy, held-out accuracy)."""
    config = classifier_config(run)
    model = prepare_model(models.for_dataset(config["arch"], run.dataset), run.device)

    def train(model: nn.Module, checkpoint) -> list[dict[str, Any]]:
        train_set = data.load(run.dataset, "train").subset(config["train_subset"], run.seed)
        train_set, holdout = train_set.split(config["holdout"], run.seed)
        x_val, y_val = holdout.tensors(run.device)
        loader = data.TensorLoader(train_set, config["batch_size"], shuffle=True, augment=config["augment"],
                                   drop_last=True, device=run.device, seed=run.seed)
        return fit(model, loader, epochs=config["epochs"], optimizer=config["optimizer"],
                   schedule=config["schedule"], checkpoint=checkpoint, desc=config["arch"],
                   evaluate=lambda m: {"val_acc": accuracy(m, x_val, y_val)})

    model, history = cache.load_or_train("classifier", config, model, train)
    return model.eval(), history


def test_set(run: Run, subset: int | None | str = "profile") -> tuple[torch.Tensor, torch.Tensor]:
    """The test images (floats in [0, 1]) and labels on the run's device; ``subset`` defaults to the
    profile's ``eval_subset`` (a fixed random sample, the same in every chapter)."""
    n = run.config["eval_subset"] if subset == "profile" else subset
    return data.load(run.dataset, "test").subset(n, seed=0).tensors(run.device)


# --- chapters 3-5: distillation-based purification --------------------------------------------------

_PURIFIER_TRAINING_KEYS = ("autoencoder", "batch_size", "optimizer", "schedule")


def _pairs_config(run: Run) -> dict[str, Any]:
    spec = run.config["purification"]
    return {"dataset": run.dataset, "seed": run.seed, "classifier": classifier_config(run),
            "train_subset": spec["train_subset"], "train_attack": spec["train_attack"]}


def adversarial_pairs(run: Run) -> tuple[data.ImageSet, Any]:
    """The purifiers' training set: clean training images and PGD examples crafted once on the
    frozen chapter-01 classifier (ε 8/255, α 2/255). f is fixed, so x' depends on nothing the
    purifiers learn, and crafting it once serves both teachers and every student."""
    config = _pairs_config(run)
    clean = data.load(run.dataset, "train").subset(config["train_subset"], run.seed)
    attack_spec = dict(config["train_attack"])
    attack = attacks.build(attack_spec.pop("name"), seed=run.seed, **attack_spec)

    def compute() -> dict[str, torch.Tensor]:
        model, _ = classifier(run)
        loader = data.TensorLoader(clean, 256, device=run.device)
        generator = torch.Generator(device=run.device).manual_seed(run.seed)
        crafted = [attack(model, x, y, generator=generator).cpu().half() for x, y in loader]
        return {"adversarial": torch.cat(crafted)}

    stored = cache.load_or_compute("purifier-pairs", config, compute)["adversarial"]
    x_clean = clean.images.float() / 255
    return clean, project_linf(stored.float(), x_clean, attack_spec["eps"])


def _purifier(run: Run, role: str, extra: dict[str, Any], loss_fn_factory: Callable[[], Any], epochs: int,
              architecture: dict[str, Any] | None = None) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Load or train one autoencoder on the adversarial pairs with the loss ``loss_fn_factory()``;
    ``architecture`` overrides the profile's autoencoder settings (e.g. ``skips=False``)."""
    spec = run.config["purification"]
    config = {"role": role, **_pairs_config(run), **{k: spec[k] for k in _PURIFIER_TRAINING_KEYS},
              "epochs": epochs, **extra}
    config["autoencoder"] = {**spec["autoencoder"], **(architecture or {})}
    meta = data.info(run.dataset)
    model = prepare_model(models.build("cae", in_channels=meta.in_channels, **config["autoencoder"]), run.device)

    def train(model: nn.Module, checkpoint) -> list[dict[str, Any]]:
        clean, adversarial = adversarial_pairs(run)
        rest, held_out = data.split_indices(len(clean), min(500, len(clean) // 10), run.seed)
        x_val, y_val = clean.select(held_out).tensors(run.device)
        x_val_adv = adversarial[held_out].to(run.device)
        frozen_classifier, _ = classifier(run)
        loader = data.TensorLoader(clean.select(rest), config["batch_size"], shuffle=True, drop_last=True,
                                   device=run.device, seed=run.seed, paired=adversarial[rest])

        def evaluate(purifier: nn.Module) -> dict[str, float]:
            purified = predict(purifier, x_val_adv)
            return {"val_mse_adv": float(((purified - x_val) ** 2).mean()),
                    "val_acc_adv": accuracy(Purified(purifier, frozen_classifier), x_val_adv, y_val)}

        return fit(model, loader, epochs=epochs, optimizer=config["optimizer"], schedule=config["schedule"],
                   loss_fn=loss_fn_factory(), checkpoint=checkpoint, evaluate=evaluate, desc=role)

    model, history = cache.load_or_train(f"purifier-{role}", config, model, train)
    return model.eval(), history


def purifier_teacher(run: Run, kind: str, **architecture: Any) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The NT teacher (``kind="nt"``, MSE on clean images) or the AT teacher (``kind="at"``, MSE on
    PGD examples plus the relativistic term through the frozen classifier), Koo et al. Sec. 3.2.
    ``architecture`` trains a variant of the autoencoder instead (chapter 3: depth and skips)."""
    if kind not in ("nt", "at"):
        raise ValueError(f"teacher kind must be 'nt' or 'at', not {kind!r}")
    spec = run.config["purification"]
    if kind == "nt":
        factory = lambda: defenses.build("purifier-nt")  # noqa: E731
    else:
        factory = lambda: defenses.build("purifier-at", classifier=classifier(run)[0])  # noqa: E731
    return _purifier(run, f"teacher-{kind}", {}, factory, spec["teacher_epochs"], architecture)


def purifier_student(run: Run, teachers: tuple[str, ...] = ("at", "nt")) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The student purifier distilled from ``teachers`` (Koo et al. Sec. 3.3); the paper's purifier
    uses both, the ablation (Table 2) one at a time."""
    spec = run.config["purification"]
    extra = {"teachers": sorted(teachers), "beta": spec["beta"], "gamma": spec["gamma"], "kd_space": spec["kd_space"],
             "teacher_epochs": spec["teacher_epochs"]}

    def factory():
        teacher_models = {kind: purifier_teacher(run, kind)[0] for kind in sorted(teachers)}
        return defenses.build("purifier-kd", teachers=teacher_models, classifier=classifier(run)[0],
                              beta=spec["beta"], gamma=spec["gamma"], kd_space=spec["kd_space"])

    return _purifier(run, "student-" + "-".join(sorted(teachers)), extra, factory, spec["student_epochs"])
