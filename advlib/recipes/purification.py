"""Chapters 3-5: the purifiers of distillation-based purification (Koo et al. 2023) — the PGD
training pairs, the NT and AT teachers, the distilled students — and the paper's gray-box tables."""
from __future__ import annotations

import json
from typing import Any, Callable

import torch
from torch import nn

from .. import attacks, cache, data, defenses, distributed, papers
from ..attacks.primitives import in_mode, project_linf
from ..defenses import nrp, soap
from ..config import PURIFICATION_ATTACKS, Run
from ..evaluation import Purified, accuracy, gray_box, predict
from ..training import fit
from .classifier import classifier, classifier_config
from .common import network, test_set, training_data

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


def _split_pairs(run: Run) -> tuple[data.ImageSet, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The purifiers' pairs (:func:`adversarial_pairs`) and the indices of their training part and of
    their held-out slice (a tenth, at most 500), the same for every purifier trained on them."""
    clean, adversarial = adversarial_pairs(run)
    rest, held_out = data.split_indices(len(clean), min(500, len(clean) // 10), run.seed)
    return clean, adversarial, rest, held_out


def _purifier_config(run: Run, role: str, extra: dict[str, Any], epochs: int,
                     architecture: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = run.config["purification"]
    config = {"role": role, **_pairs_config(run), **{k: spec[k] for k in _PURIFIER_TRAINING_KEYS},
              "epochs": epochs, **extra}
    config["autoencoder"] = {**spec["autoencoder"], **(architecture or {})}
    return config


def _purifier(run: Run, role: str, extra: dict[str, Any], loss_fn_factory: Callable[[], Any], epochs: int,
              launch: Callable[[], None] | None, architecture: dict[str, Any] | None = None
              ) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Load or train one autoencoder on the adversarial pairs with the loss ``loss_fn_factory()``
    (or have ``launch`` train it on several GPUs); ``architecture`` overrides the profile's
    autoencoder settings (e.g. ``skips=False``)."""
    config = _purifier_config(run, role, extra, epochs, architecture)
    def build(initialise: bool) -> nn.Module:
        return network(run, "purifier", seed=run.seed, initialise=initialise, **(architecture or {}))

    def train(model: nn.Module, checkpoint) -> list[dict[str, Any]]:
        clean, adversarial, rest, held_out = _split_pairs(run)
        x_val, y_val = clean.select(held_out).tensors(run.device)
        x_val_adv = adversarial[held_out].to(run.device)
        seen = rest[:len(held_out)]
        _, y_seen = clean.select(seen).tensors(run.device)
        x_seen_adv = adversarial[seen].to(run.device)
        frozen_classifier, _ = classifier(run)
        loader = data.TensorLoader(clean.select(rest), config["batch_size"], shuffle=True, drop_last=True,
                                   device=run.device, seed=run.seed, paired=adversarial[rest])

        def evaluate(purifier: nn.Module) -> dict[str, float]:
            purified = predict(purifier, x_val_adv)
            defended = Purified(purifier, frozen_classifier)
            return {"val_mse_adv": float(((purified - x_val) ** 2).mean()),
                    "val_acc_adv": accuracy(defended, x_val_adv, y_val),
                    "train_acc_adv": accuracy(defended, x_seen_adv, y_seen)}

        return fit(model, loader, epochs=epochs, optimizer=config["optimizer"], schedule=config["schedule"],
                   loss_fn=loss_fn_factory(), checkpoint=checkpoint, evaluate=evaluate, desc=role,
                   sync_batchnorm=run.sync_batchnorm)

    model, history = cache.load_or_train(f"purifier-{role}", config, build, train, launch=launch)
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
    settings = (f"{key}={json.dumps(value)}" for key, value in architecture.items())
    launch = distributed.launcher(run, "purifier-teacher", kind, *settings)
    return _purifier(run, f"teacher-{kind}", {}, factory, spec["teacher_epochs"], launch, architecture)


def purifier_student_loss(run: Run, teachers: tuple[str, ...] = ("at", "nt")) -> Any:
    """The student's trainer (:func:`student_trainer`) holding the cached (or freshly trained) ``teachers``."""
    teacher_models = {kind: purifier_teacher(run, kind)[0] for kind in sorted(teachers)}
    return student_trainer(run, teacher_models, lambda: classifier(run)[0])


def student_trainer(run: Run, teachers: dict[str, nn.Module], classifier_of: Callable[[], nn.Module]) -> Any:
    """:class:`~advlib.defenses.purification.StudentLoss` with the profile's β, γ, KD space and
    teacher inputs.

    The trainer gets the classifier (``classifier_of()``) only where L_kd needs it
    (``kd_space="logits"``): in pixel space f's forward pass on S(x') would only feed a running
    training accuracy, and it took a quarter of a CPU step; the history's ``train_acc_adv`` measures
    that accuracy after each epoch instead."""
    spec = run.config["purification"]
    frozen_classifier = classifier_of() if spec["kd_space"] == "logits" else None
    return defenses.build("purifier-kd", teachers=teachers, classifier=frozen_classifier,
                          **{k: spec[k] for k in STUDENT_LOSS_KEYS})


STUDENT_LOSS_KEYS = ("beta", "gamma", "kd_space", "nt_sees_clean")


def purifier_student(run: Run, teachers: tuple[str, ...] = ("at", "nt")) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The student purifier distilled from ``teachers`` (Koo et al. Sec. 3.3); the paper's purifier
    uses both, the ablation (Table 2) one at a time."""
    spec = run.config["purification"]
    return _purifier(run, "student-" + "-".join(sorted(teachers)), _student_extra(run, teachers),
                     lambda: purifier_student_loss(run, teachers), spec["student_epochs"],
                     distributed.launcher(run, "purifier-student", *sorted(teachers)))


def _student_extra(run: Run, teachers: tuple[str, ...]) -> dict[str, Any]:
    spec = run.config["purification"]
    return {"teachers": sorted(teachers), **{k: spec[k] for k in STUDENT_LOSS_KEYS},
            "teacher_epochs": spec["teacher_epochs"]}


def purifier_config(run: Run, role: str) -> dict[str, Any]:
    """What determines the purifier ``role`` (``"teacher-at"``, ``"teacher-nt"`` or
    ``"student-at-nt"``, …) as the cache keys it, for evaluations cached on top of it."""
    spec = run.config["purification"]
    if role.startswith("teacher-"):
        return _purifier_config(run, role, {}, spec["teacher_epochs"])
    teachers = tuple(role.removeprefix("student-").split("-"))
    return _purifier_config(run, role, _student_extra(run, teachers), spec["student_epochs"])


SOAP_PURIFICATION_KEYS = ("budgets", "step_size", "steps")


def soap_config(run: Run) -> dict[str, Any]:
    """What determines SOAP-RP's network g (the cache key of :func:`soap_network`); the purification
    settings (budgets, step, steps) only wrap it."""
    spec = {k: v for k, v in run.config["purification"]["soap"].items() if k not in SOAP_PURIFICATION_KEYS}
    return {"role": "soap-rp", "dataset": run.dataset, "seed": run.seed, **spec}


def soap_network(run: Run) -> tuple[nn.Module, list[dict[str, Any]]]:
    """SOAP-RP's network g (Shi et al. 2021, Eq. 2 and 7): classification and rotation prediction
    trained jointly on Gaussian-noised clean training images (:class:`~advlib.defenses.soap.SOAPTrainingLoss`),
    with its held-out class and rotation accuracy after each epoch."""
    config = soap_config(run)

    def build(initialise: bool) -> nn.Module:
        return network(run, "soap", seed=run.seed, initialise=initialise)

    def train(model: nn.Module, checkpoint) -> list[dict[str, Any]]:
        loader, x_val, y_val = training_data(run, config)

        def evaluate(net: nn.Module) -> dict[str, float]:
            rotated, targets = soap.rotations(x_val)  # the first len(x_val) are x_val itself
            with torch.no_grad(), in_mode(net, "eval"):
                features = net.features(rotated)
                class_correct = net.classify(features[:len(x_val)]).argmax(1) == y_val
                rotation_correct = net.rotation(features).argmax(1) == targets
            return {"val_acc": class_correct.float().mean().item(),
                    "val_rotation_acc": rotation_correct.float().mean().item()}

        trainer = defenses.build("soap-rp", alpha=config["alpha"], noise_sigma=config["noise_sigma"], seed=run.seed)
        return fit(model, loader, epochs=config["epochs"], optimizer=config["optimizer"], schedule=config["schedule"],
                   loss_fn=trainer, checkpoint=checkpoint, evaluate=evaluate, desc="soap-rp",
                   sync_batchnorm=run.sync_batchnorm)

    model, history = cache.load_or_train("soap-rp", config, build, train, launch=distributed.launcher(run, "soap"))
    return model.eval(), history


def soap_purifier_config(run: Run) -> dict[str, Any]:
    """What determines SOAP-RP as a purifier: g's configuration and the purification settings."""
    spec = run.config["purification"]["soap"]
    return {**soap_config(run), **{key: spec[key] for key in SOAP_PURIFICATION_KEYS}}


def soap_purifier(run: Run) -> tuple[soap.SOAPPurifier, list[dict[str, Any]]]:
    """SOAP-RP as a purifier (:class:`~advlib.defenses.soap.SOAPPurifier`): :func:`soap_network` with
    the profile's budgets ε_pfy, step size and number of steps (Sec. 4: 5 steps of 4/255 on CIFAR-10),
    and g's training history."""
    spec = run.config["purification"]["soap"]
    net, history = soap_network(run)
    return soap.SOAPPurifier(net, spec["budgets"], spec["step_size"], spec["steps"]).eval(), history


NRP_TRAINING_KEYS = ("eps", "step_size", "steps", "adversarial_weight", "pixel_weight", "feature_weight")


def nrp_features_config(run: Run) -> dict[str, Any]:
    """What determines NRP's feature extractor F: VGG-16's ImageNet weights (the paper profile, as
    NRP), or a small CNN trained on the purifiers' clean training images (the quick profile)."""
    spec = run.config["purification"]["nrp"]["features"]
    if spec["arch"] == "vgg16":
        return {"arch": "vgg16", "layer": "relu3_3", "weights": "imagenet"}
    return {"role": "nrp-features", "dataset": run.dataset, "seed": run.seed,
            "train_subset": run.config["purification"]["train_subset"], **spec}


def nrp_feature_extractor(run: Run) -> nn.Module:
    """NRP's fixed feature extractor F (:func:`nrp_features_config`), frozen, on the run's device."""
    config = nrp_features_config(run)
    if config["arch"] == "vgg16":
        return nrp.vgg16_relu3_3().to(run.device)

    def build(initialise: bool) -> nn.Module:
        return network(run, "classifier", seed=run.seed, initialise=initialise, arch=config["arch"],
                       width=config["width"])

    def train(model: nn.Module, checkpoint) -> list[dict[str, Any]]:
        clean = data.load(run.dataset, "train").subset(config["train_subset"], run.seed)
        loader = data.TensorLoader(clean, config["batch_size"], shuffle=True, drop_last=True, device=run.device,
                                   seed=run.seed)
        return fit(model, loader, epochs=config["epochs"], optimizer=config["optimizer"], schedule=config["schedule"],
                   checkpoint=checkpoint, desc="nrp-features")

    model, _ = cache.load_or_train("nrp-features", config, build, train)
    return nrp.features_up_to(model, config["stages"])


def nrp_config(run: Run) -> dict[str, Any]:
    """What determines NRP (the cache key of :func:`nrp_purifier`): its networks, losses, SSP and
    training, F, and the purifiers' training images and held-out PGD examples it is evaluated on."""
    spec = run.config["purification"]["nrp"]
    return {"role": "nrp", **_pairs_config(run), "features": nrp_features_config(run),
            **{k: v for k, v in spec.items() if k != "features"}}


def nrp_purifier(run: Run) -> tuple[nrp.NRPNetwork, list[dict[str, Any]]]:
    """NRP's purifier P_θ (Naseer et al. 2020, Alg. 1: :class:`~advlib.defenses.nrp.NRPTrainingLoss`),
    trained with its critic on SSP examples of the purifiers' clean training images (labels unused),
    and its history: the loss terms, and after each epoch the held-out MSE of P(x') against x and
    the accuracy of f∘P on clean images and on the held-out PGD examples crafted on f."""
    config = nrp_config(run)

    def build(initialise: bool) -> nn.Module:
        return network(run, "nrp", seed=run.seed, initialise=initialise)

    def train(model: nn.Module, checkpoint) -> list[dict[str, Any]]:
        clean, adversarial, rest, held_out = _split_pairs(run)
        x_val, y_val = clean.select(held_out).tensors(run.device)
        x_val_adv = adversarial[held_out].to(run.device)
        frozen_classifier, _ = classifier(run)
        loader = data.TensorLoader(clean.select(rest), config["batch_size"], shuffle=True, drop_last=True,
                                   device=run.device, seed=run.seed, images_per_epoch=config["images_per_epoch"])

        def evaluate(trained: nn.Module) -> dict[str, float]:
            purified_adv = predict(trained.purifier, x_val_adv)
            return {"val_mse_adv": float(((purified_adv - x_val) ** 2).mean()),
                    "val_acc_clean": accuracy(Purified(trained.purifier, frozen_classifier), x_val, y_val),
                    "val_acc_adv": accuracy(frozen_classifier, purified_adv, y_val)}

        trainer = defenses.build("nrp", extractor=nrp_feature_extractor(run), seed=run.seed,
                                 **{k: config[k] for k in NRP_TRAINING_KEYS})
        return fit(model, loader, epochs=config["epochs"], optimizer=config["optimizer"], schedule=config["schedule"],
                   loss_fn=trainer, checkpoint=checkpoint, evaluate=evaluate, desc="nrp")

    model, history = cache.load_or_train("nrp", config, build, train, launch=distributed.launcher(run, "nrp"))
    return model.purifier.eval(), history


# Table 1's baseline purifiers, as the paper names its columns: computed beside "ours" when
# :func:`gray_box_tables` is given them
TABLE1_BASELINES = ("NRP", "SOAP")

# Table 2's rows, and the purifier each is measured on (as named in :func:`gray_box_tables`).
ABLATION = {"AT teacher, no KD": "AT teacher, no KD", "KD from AT": "KD from AT", "KD from NT": "KD from NT",
            "KD from AT and NT": "ours"}


def gray_box_tables(run: Run, purifiers: dict[str, nn.Module]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The paper's Tables 1 and 2 under its protocol (:func:`~advlib.evaluation.protocols.gray_box`):
    every attack of Sec. 4.1 crafted on the chapter-1 classifier alone, on the profile's test images
    (AutoAttack on the first ``autoattack_subset``, with the section's ``autoattack_iterations`` and
    ``square_queries``: the reference's, cut in the smoke run), scored through each of ``purifiers`` (which
    must hold ``"ours"`` and the ablation's purifiers of :data:`ABLATION`; those of
    :data:`TABLE1_BASELINES` it holds are Table 1's computed columns). Accuracies in %, next to the
    paper's; both tables are written to the results folder."""
    spec = run.config["purification"]
    model, _ = classifier(run)
    x, y = test_set(run, spec["eval_subset"])
    budgets = {"AA": {"iterations": spec["autoattack_iterations"], "square_queries": spec["square_queries"]}}
    named = {name: attacks.build(**{**settings, **budgets.get(name, {}), "seed": run.seed})
             for name, settings in PURIFICATION_ATTACKS.items()}
    subsets = {"AA": spec["autoattack_subset"]} if spec["autoattack_subset"] else None
    table = gray_box(model, purifiers, named, x, y, subsets=subsets)

    def percent(value: float) -> float:
        return round(100 * value, 2)

    table1 = {row: {"no defence": percent(r["no defence"]), "ours": percent(r["ours"]),
                    **{name: percent(r[name]) for name in TABLE1_BASELINES if name in purifiers}, "images": r["images"],
                    **{f"paper: {k}": v for k, v in papers.PURIFICATION_TABLE1[row].items()}}
              for row, r in table.items()}
    others = [name for name in purifiers if name not in ABLATION.values() and name not in TABLE1_BASELINES]
    table2 = {row: {**{name: percent(r[column]) for name, column in ABLATION.items()},
                    **{name: percent(r[name]) for name in others},
                    **{f"paper: {name}": papers.PURIFICATION_TABLE2[name][row] for name in ABLATION},
                    "images": r["images"]}
              for row, r in table.items() if row != "Original"}
    run.save_results("purification_table1", table1)
    run.save_results("purification_table2", table2)
    return table1, table2
