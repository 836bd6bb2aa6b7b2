"""The book's trained artifacts, each "load if present, else train" under its configuration hash.

A notebook asks for what it needs (``recipes.classifier(run)``); whichever notebook runs first
trains it, every later one loads it, and each notebook still runs on its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from . import attacks, cache, data, defenses, models, paths
from .attacks._checks import project_linf
from .config import Run, prepare_model
from .defenses.purification import Purified
from .evaluation import accuracy, predict
from .training import Callback, fit


def classifier_config(run: Run) -> dict[str, Any]:
    """Everything that determines the chapter-01 classifier's weights."""
    return {"dataset": run.dataset, "seed": run.seed, **run.config["classifier"]}


def _training_data(run: Run, config: dict[str, Any]) -> tuple[data.TensorLoader, torch.Tensor, torch.Tensor]:
    """The shuffled (optionally augmented) training loader of ``config`` and its held-out slice."""
    train_set = data.load(run.dataset, "train").subset(config["train_subset"], run.seed)
    train_set, holdout = train_set.split(config["holdout"], run.seed)
    x_val, y_val = holdout.tensors(run.device)
    loader = data.TensorLoader(train_set, config["batch_size"], shuffle=True, augment=config["augment"],
                               drop_last=True, device=run.device, seed=run.seed)
    return loader, x_val, y_val


def classifier(run: Run) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The standard-trained classifier of chapter 01 (ResNet56 on CIFAR-10 in the paper profile),
    in eval mode, with its per-epoch history (training loss/accuracy, held-out accuracy)."""
    config = classifier_config(run)
    model = network(run, "classifier")

    def train(model: nn.Module, checkpoint) -> list[dict[str, Any]]:
        loader, x_val, y_val = _training_data(run, config)
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
    model = network(run, "purifier", **(architecture or {}))

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


def purifier_student_loss(run: Run, teachers: tuple[str, ...] = ("at", "nt")) -> Any:
    """The student's trainer (:class:`~advlib.defenses.purification.StudentLoss`) with the profile's
    β, γ, KD space and teacher inputs, holding the cached (or freshly trained) ``teachers``."""
    spec = run.config["purification"]
    teacher_models = {kind: purifier_teacher(run, kind)[0] for kind in sorted(teachers)}
    return defenses.build("purifier-kd", teachers=teacher_models, classifier=classifier(run)[0],
                          **{k: spec[k] for k in _STUDENT_LOSS_KEYS})


_STUDENT_LOSS_KEYS = ("beta", "gamma", "kd_space", "nt_sees_clean")


def purifier_student(run: Run, teachers: tuple[str, ...] = ("at", "nt")) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The student purifier distilled from ``teachers`` (Koo et al. Sec. 3.3); the paper's purifier
    uses both, the ablation (Table 2) one at a time."""
    spec = run.config["purification"]
    extra = {"teachers": sorted(teachers), **{k: spec[k] for k in _STUDENT_LOSS_KEYS},
             "teacher_epochs": spec["teacher_epochs"]}
    return _purifier(run, "student-" + "-".join(sorted(teachers)), extra,
                     lambda: purifier_student_loss(run, teachers), spec["student_epochs"])


# --- chapters 6 and 8: adversarial training and DYNAT ----------------------------------------------

@dataclass(frozen=True)
class Method:
    """A row of the book's tables: its ``name`` (cache and JSON key), its ``label`` (as the paper
    names it), the ``trainer`` registered in :mod:`advlib.defenses`, the profile ``section`` with
    the trainer's options, and the ``fixed`` options that make this variant."""

    name: str
    label: str
    trainer: str
    section: str | None = None
    fixed: dict[str, Any] = field(default_factory=dict)


# Chapters 6 and 8. The DYNAT methods train a guide and a target together.
AT_METHODS: dict[str, Method] = {m.name: m for m in (
    Method("standard", "Standard", "standard"),
    Method("pgd_at", "PGD-AT", "pgd_at", "pgd_at"),
    Method("trades", "TRADES", "trades", "trades"),
    Method("dynat", "DYNAT", "dynat", "dynat", {"inner": "dynamic"}),
    Method("dynat_no_inner", "DYNAT without inner optimisation", "dynat", "dynat", {"inner": "ground_truth"}),
    Method("dynat_awp_beta0", "DYNAT-AWP (β = 0)", "dynat_awp", "dynat_awp", {"beta": 0.0}),
    Method("dynat_awp", "DYNAT-AWP (β = 1)", "dynat_awp", "dynat_awp", {"beta": 1.0}),
    Method("dynat_inner_awp", "DYNAT-Inner-AWP (β = 1)", "dynat_inner_awp", "dynat_awp", {"beta": 1.0}),
)}

_AT_TRAINING_KEYS = ("target", "normalize", "train_subset", "holdout", "batch_size", "epochs", "augment",
                     "optimizer", "schedule", "averaging")


def adversarial_training_config(run: Run, method: str) -> dict[str, Any]:
    """Everything that determines the weights of ``method`` trained under ``run``'s profile."""
    if method not in AT_METHODS:
        raise ValueError(f"unknown method {method!r}; known methods: {', '.join(AT_METHODS)}")
    spec = run.config["adversarial_training"]
    recipe = AT_METHODS[method]
    config = {"method": method, "trainer": recipe.trainer, "dataset": run.dataset, "seed": run.seed,
              **{k: spec[k] for k in _AT_TRAINING_KEYS}}
    if recipe.section is not None:
        options = {**spec["train_attack"], **spec[recipe.section], **recipe.fixed}
        if recipe.section == "dynat_awp":
            by_dataset = spec["dynat_awp_label_weight_by_dataset"]
            options["label_weight"] = by_dataset.get(run.dataset, options["label_weight"])
            options["awp_from_epoch"] = round(options.pop("awp_start") * spec["epochs"]) + 1
        config["trainer_options"] = options
    if recipe.trainer.startswith("dynat"):
        config["guide"] = spec["guide"]
    return config


# role -> (profile section, key of the architecture in it)
NETWORK_ROLES = {"classifier": ("classifier", None), "purifier": ("purification", "autoencoder"),
                 "target": ("adversarial_training", "target"), "guide": ("adversarial_training", "guide"),
                 "student": ("distillation", "student")}


def network(run: Run, role: str, **architecture: Any) -> nn.Module:
    """A freshly initialised network for ``role`` in ``run``'s profile, on the run's device: the
    chapter-1 ``"classifier"``, the ``"purifier"`` autoencoder (chapters 3-5), the adversarially
    trained ``"target"`` and DYNAT's ``"guide"`` (chapters 6 and 8), the distilled ``"student"``
    (chapter 7). ``architecture`` overrides the profile's settings (e.g. ``skips=False``)."""
    if role not in NETWORK_ROLES:
        raise ValueError(f"unknown network role {role!r}; known roles: {', '.join(NETWORK_ROLES)}")
    section, key = NETWORK_ROLES[role]
    spec = run.config[section]
    meta = data.info(run.dataset)
    if role == "classifier":
        net = models.for_dataset(spec["arch"], run.dataset)
    elif role == "purifier":
        net = models.build("cae", in_channels=meta.in_channels, **{**spec[key], **architecture})
    else:
        params = {k: v for k, v in {**spec[key], **architecture}.items() if k != "arch"}
        if spec["normalize"]:
            net = models.for_dataset(spec[key]["arch"], run.dataset, **params)
        else:
            net = models.build(spec[key]["arch"], meta.num_classes, meta.in_channels, **params)
    return prepare_model(net, run.device)


def adversarially_trained(run: Run, method: str) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The model of ``method`` (a key of :data:`AT_METHODS`), in eval mode, with its per-epoch
    history: training loss/accuracy, clean and PGD-10 accuracy on a held-out slice of the training
    set and, for DYNAT, the guide's held-out accuracy and how often the dynamic labels
    argmax G(x) agreed with the ground truth during the epoch. DYNAT methods return the
    :class:`~advlib.defenses.dynat.GuideAndTarget` pair, whose forward pass is the target's."""
    config = adversarial_training_config(run, method)
    spec = run.config["adversarial_training"]
    target = network(run, "target")
    model = defenses.dynat.GuideAndTarget(network(run, "guide"), target) if "guide" in config else target
    options = config.get("trainer_options")
    trainer = defenses.build(config["trainer"], **(options or {}), seed=run.seed)
    averaging = config["averaging"] and {**config["averaging"], "module": "target" if "guide" in config else None}

    def train(model: nn.Module, checkpoint) -> list[dict[str, Any]]:
        loader, x_val, y_val = _training_data(run, config)
        val_attack = attacks.build("pgd", steps=10, **spec["eval_attack"], seed=run.seed)

        def evaluate(m: nn.Module) -> dict[str, float]:
            x_adv = val_attack(m, x_val, y_val)
            record = {"val_clean": accuracy(m, x_val, y_val), "val_pgd10": accuracy(m, x_adv, y_val)}
            if isinstance(m, defenses.dynat.GuideAndTarget):
                record["guide_val_acc"] = accuracy(m.guide, x_val, y_val)
                record["label_agreement"] = trainer.pop_label_agreement()
            return record

        return fit(model, loader, epochs=config["epochs"], optimizer=config["optimizer"],
                   schedule=config["schedule"], loss_fn=trainer, checkpoint=checkpoint, evaluate=evaluate,
                   desc=method, callbacks=[trainer] if isinstance(trainer, Callback) else [],
                   averaging=averaging)

    model, history = cache.load_or_train(f"at-{method}", config, model, train)
    return model.eval(), history


AT_COLUMNS = defenses.dynat.PAPER_COLUMNS


def _robustness_row(run: Run, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    named_attacks: dict[str, Any], eps: float, evaluation: dict[str, Any],
                    transfer_to: nn.Module | None = None) -> dict[str, float]:
    """Accuracy clean and under each of ``named_attacks`` on its own, and under AutoAttack (standard,
    with the ``evaluation`` section's budgets) on the first ``autoattack_subset`` images together
    with PGD-20 on those same images (the check AA ≤ PGD-20); ``named_attacks`` must hold
    ``"PGD-20"``. With ``transfer_to``, also the ``"transfer"`` of the PGD-20 examples to that model
    (:func:`~advlib.defenses.distillation.transfer_rate`)."""
    keep = ("PGD-20",) if transfer_to is not None else ()
    report = attacks.evaluate.robust_accuracy(model, x, y, named_attacks, cascade=False, keep_adversarial=keep)
    n_aa = min(evaluation["autoattack_subset"] or len(x), len(x))
    aa = attacks.build("autoattack", eps=eps, version="standard", iterations=evaluation["autoattack_iterations"],
                       square_queries=evaluation["square_queries"], seed=run.seed)
    aa_report = attacks.evaluate.robust_accuracy(model, x[:n_aa], y[:n_aa], {"AA": aa})
    # without cascading, PGD-20's per-image outcomes on the first n_aa images are already known
    pgd20_on_aa_images = report.per_attack["PGD-20"][:n_aa].float().mean().item()
    row = {**report.accuracies, "AA": aa_report.accuracies["AA"],
           "PGD-20 (AA images)": pgd20_on_aa_images, "images": len(x), "aa_images": n_aa}
    row.pop("worst case", None)
    if transfer_to is not None:
        attacked = report.clean
        row["transfer"] = defenses.distillation.transfer_rate(model, transfer_to, report.adversarial["PGD-20"][attacked],
                                                              y.cpu()[attacked])
    return row


def _stored_row(stored: dict[str, torch.Tensor], label: str) -> dict[str, Any]:
    row: dict[str, Any] = {"method": label, "source": "this run"}
    for key, value in stored.items():
        row[key] = int(value) if key in ("images", "aa_images") else round(float(value), 6)
    return row


def at_evaluation(run: Run, method: str) -> dict[str, Any]:
    """One row of the paper's Table 1 for ``method``: accuracy (in [0, 1]) clean and under PGD-10/20/50
    and CW-∞ (each attack on its own, on the profile's ``eval_subset`` test images), and under
    AutoAttack (standard) on the first ``autoattack_subset`` of them, with PGD-20 on those same
    images for the sanity check AA ≤ PGD-20. Cached like a trained model."""
    spec = run.config["adversarial_training"]
    evaluation = spec["evaluation"]
    config = {"model": adversarial_training_config(run, method), **evaluation, "eval_attack": spec["eval_attack"]}

    def compute() -> dict[str, torch.Tensor]:
        model, _ = adversarially_trained(run, method)
        x, y = test_set(run, evaluation["eval_subset"])
        eps, alpha = spec["eval_attack"]["eps"], spec["eval_attack"]["alpha"]
        named = {f"PGD-{steps}": attacks.build("pgd", eps=eps, alpha=alpha, steps=steps, seed=run.seed)
                 for steps in (10, 20, 50)}
        named["CW"] = attacks.build("cw-linf", eps=eps, alpha=alpha, steps=evaluation["cw_steps"],
                                    restarts=evaluation["cw_restarts"], seed=run.seed)
        row = _robustness_row(run, model, x, y, named, eps, evaluation)
        return {key: torch.tensor(float(value)) for key, value in row.items()}

    stored = cache.load_or_compute("at-evaluation", config, compute)
    return _stored_row(stored, AT_METHODS[method].label)


def save_at_dynat(run: Run, rows: list[dict[str, Any]]) -> Any:
    """Write ``_build/results/<profile>-<dataset>/at_dynat.json``: our rows and, in the paper profile,
    the rows of the seed's table for the dataset (Table 1 for CIFAR-10, Table 2 for CIFAR-100),
    labelled as the paper's; every accuracy a fraction in [0, 1]."""
    table = list(rows)
    if run.profile == "paper" and run.dataset in defenses.dynat.PAPER_TABLES:
        name, paper_rows = defenses.dynat.PAPER_TABLES[run.dataset]
        table += [{"method": method, "source": f"paper ({name})", **{k: v / 100 for k, v in values.items()}}
                  for method, values in paper_rows.items()]
    return run.save_results("at_dynat", table)


# --- chapter 7: adversarial distillation and SAAD ----------------------------------------------------

DISTILLATION_METHODS = ("standard", "ard", "rslad", "adaad", "igdm", "saad")

DISTILLATION_LABELS = {"teacher": "Teacher", "standard": "Standard student (no teacher)", "ard": "ARD",
                       "rslad": "RSLAD", "adaad": "AdaAD", "igdm": "IGDM (on AdaAD)", "saad": "SAAD"}

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


def distillation_config(run: Run, method: str) -> dict[str, Any]:
    """Everything that determines the weights of the student of ``method`` (a member of
    :data:`DISTILLATION_METHODS`) under ``run``'s profile."""
    if method not in DISTILLATION_METHODS:
        raise ValueError(f"unknown distillation method {method!r}; known methods: {', '.join(DISTILLATION_METHODS)}")
    spec = run.config["distillation"]
    config = {"method": method, "dataset": run.dataset, "seed": run.seed,
              **{k: spec[k] for k in _DISTILLATION_TRAINING_KEYS}}
    if method != "standard":
        options = {**spec["train_attack"], **spec[method]}
        if method in ("igdm", "saad"):
            options["epochs"] = spec["epochs"]
            options["igdm_weight"] = spec["igdm_weight_by_dataset"].get(run.dataset, options["igdm_weight"])
        config["teacher"] = distillation_teacher_config(run)
        config["trainer_options"] = options
    config["averaging"] = spec["averaging"] if method == "saad" or spec["average_baselines"] else None
    return config


def distillation_trainer(run: Run, method: str, teacher: nn.Module) -> Any:
    """The trainer of ``method`` with the profile's options, distilling from ``teacher``."""
    config = distillation_config(run, method)
    if method == "standard":
        return defenses.build("standard", seed=run.seed)
    return defenses.build(method, teacher=teacher, **config["trainer_options"], seed=run.seed)


def distilled_student(run: Run, method: str) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The student of ``method`` in eval mode (SAAD's is the SWA average), with its per-epoch history:
    training loss/accuracy, held-out clean and PGD-10 accuracy and ``val_transfer``, the
    :func:`~advlib.defenses.distillation.transfer_rate` of the student's held-out PGD-10 examples
    (crafted on the images it classifies correctly) to the teacher; for
    SAAD also :meth:`~advlib.defenses.distillation.SAAD.pop_weight_statistics`."""
    config = distillation_config(run, method)
    spec = run.config["distillation"]
    model = network(run, "student")

    def train(model: nn.Module, checkpoint) -> list[dict[str, Any]]:
        teacher = distillation_teacher(run)
        trainer = distillation_trainer(run, method, teacher)
        loader, x_val, y_val = _training_data(run, config)
        val_attack = attacks.build("pgd", steps=10, **spec["eval_attack"], seed=run.seed)

        def evaluate(student: nn.Module) -> dict[str, float]:
            correct = predict(student, x_val).argmax(1) == y_val
            x_adv = val_attack(student, x_val, y_val)
            record = {"val_clean": correct.float().mean().item(), "val_pgd10": accuracy(student, x_adv, y_val),
                      "val_transfer": defenses.distillation.transfer_rate(student, teacher, x_adv[correct],
                                                                          y_val[correct])}
            if isinstance(trainer, defenses.distillation.SAAD) and student is model:
                record.update(trainer.pop_weight_statistics())
            return record

        return fit(model, loader, epochs=config["epochs"], optimizer=config["optimizer"],
                   schedule=config["schedule"], loss_fn=trainer, checkpoint=checkpoint, evaluate=evaluate,
                   desc=method, averaging=config["averaging"])

    model, history = cache.load_or_train(f"distilled-{method}", config, model, train)
    return model.eval(), history


DISTILLATION_COLUMNS = ("clean", "FGSM", "PGD-20", "CW", "AA")


def distillation_evaluation(run: Run, method: str) -> dict[str, Any]:
    """One row of the SAAD comparison for ``"teacher"`` or a student of :data:`DISTILLATION_METHODS`:
    accuracy (in [0, 1]) clean and under FGSM, PGD-20 and CW-∞ (each on its own, on the profile's
    ``eval_subset`` test images), AutoAttack (standard) on the first ``autoattack_subset`` with
    PGD-20 on the same images, and for students ``transfer``: the transfer rate to the teacher of the
    student's PGD-20 examples of the images it classifies correctly. Cached like a trained model."""
    spec = run.config["distillation"]
    evaluation = spec["evaluation"]
    model_config = distillation_teacher_config(run) if method == "teacher" else distillation_config(run, method)
    config = {"model": model_config, "teacher": distillation_teacher_config(run), **evaluation,
              "eval_attack": spec["eval_attack"]}

    def compute() -> dict[str, torch.Tensor]:
        teacher = distillation_teacher(run)
        model = teacher if method == "teacher" else distilled_student(run, method)[0]
        x, y = test_set(run, evaluation["eval_subset"])
        eps, alpha = spec["eval_attack"]["eps"], spec["eval_attack"]["alpha"]
        named = {"FGSM": attacks.build("fgsm", eps=eps),
                 "PGD-20": attacks.build("pgd", eps=eps, alpha=alpha, steps=20, seed=run.seed),
                 "CW": attacks.build("cw-linf", eps=eps, alpha=alpha, steps=evaluation["cw_steps"],
                                     restarts=evaluation["cw_restarts"], seed=run.seed)}
        row = _robustness_row(run, model, x, y, named, eps, evaluation,
                              transfer_to=None if method == "teacher" else teacher)
        return {key: torch.tensor(float(value)) for key, value in row.items()}

    stored = cache.load_or_compute("distillation-evaluation", config, compute)
    return _stored_row(stored, DISTILLATION_LABELS[method])


def save_distillation(run: Run, rows: list[dict[str, Any]]) -> Any:
    """Write ``_build/results/<profile>-<dataset>/distillation.json``, one row per model, every
    accuracy a fraction in [0, 1]."""
    return run.save_results("distillation", rows)
