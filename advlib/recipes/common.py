"""What every part of the book trains with: a method's description, the network for a role, the
training data with its held-out slice, and the test images (chapter 1 introduces them)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .. import cache, data, models
from ..config import Run, prepare_model
from ..defenses.nrp import Critic, NRPNetwork, NRPTraining
from ..defenses.soap import SOAPNetwork
from ..evaluation import accuracy, predict, transfer_rate
from ..evaluation.protocols import BPDAPurified, autoattack_standard, craft, folded


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


# role -> (profile section, key of the architecture in it)
NETWORK_ROLES = {"classifier": ("classifier", None), "purifier": ("purification", "autoencoder"),
                 "target": ("adversarial_training", "target"), "guide": ("adversarial_training", "guide"),
                 "student": ("distillation", "student"), "soap": ("purification", "soap"),
                 "nrp": ("purification", "nrp")}


def network(run: Run, role: str, *, seed: int | None = None, initialise: bool = True,
            **architecture: Any) -> nn.Module:
    """A freshly initialised network for ``role`` in ``run``'s profile, on the run's device: the
    chapter-1 ``"classifier"``, the ``"purifier"`` autoencoder (chapters 3-5), the adversarially
    trained ``"target"`` and DYNAT's ``"guide"`` (chapters 6, 8 and 9), the distilled ``"student"``
    (chapter 7), SOAP's two-headed ``"soap"`` network and NRP's purifier with its critic (``"nrp"``,
    chapter 5). ``architecture`` overrides the
    profile's settings (e.g. ``skips=False``); one that names
    an ``arch`` replaces them (a method's own network in the paper profile).

    With ``seed`` the initial weights are drawn from a generator seeded by it alone, so that a cached
    artifact's weights follow from its configuration and not from what the process ran before (a
    notebook run on its own trains the same model as the batch run); the global RNG is left as it was.
    ``initialise=False`` leaves the weights empty (uninitialised memory), for a network whose weights
    are about to be loaded (:func:`advlib.cache.load_or_train`)."""
    if role not in NETWORK_ROLES:
        raise ValueError(f"unknown network role {role!r}; known roles: {', '.join(NETWORK_ROLES)}")
    if not initialise:
        with torch.device("meta"):
            net = _architecture(run, role, architecture)
    elif seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = _architecture(run, role, architecture)
    else:
        net = _architecture(run, role, architecture)
    return prepare_model(net, run.device)


def _architecture(run: Run, role: str, architecture: dict[str, Any]) -> nn.Module:
    section, key = NETWORK_ROLES[role]
    spec = run.config[section]
    meta = data.info(run.dataset)
    if role == "classifier":
        settings = architecture if "arch" in architecture else {"arch": spec["arch"], **architecture}
        return models.for_dataset(settings["arch"], run.dataset, **{k: v for k, v in settings.items() if k != "arch"})
    if role == "purifier":
        return models.build("cae", in_channels=meta.in_channels, **{**spec[key], **architecture})
    if role == "nrp":
        settings = {**spec[key]["purifier"], **architecture}
        return NRPTraining(NRPNetwork(meta.in_channels, **settings), Critic(meta.in_channels, **spec[key]["critic"]))
    if role == "soap":
        settings = {**spec[key]["network"], **architecture}
        return SOAPNetwork(models.for_dataset(settings.pop("arch"), run.dataset, **settings))
    settings = architecture if "arch" in architecture else {**spec[key], **architecture}
    params = {k: v for k, v in settings.items() if k != "arch"}
    if spec["normalize"]:
        return models.for_dataset(settings["arch"], run.dataset, **params)
    return models.build(settings["arch"], meta.num_classes, meta.in_channels, **params)


def training_data(run: Run, config: dict[str, Any], shuffle_seed: int | None = None
                  ) -> tuple[data.TensorLoader, torch.Tensor, torch.Tensor]:
    """The shuffled (optionally augmented) training loader of ``config`` and its held-out slice. The
    images are the run's seed's; ``shuffle_seed`` (default the run's) orders and augments them.
    ``config["images_per_epoch"]``, where set, makes epochs shares of a stream of passes
    (:class:`~advlib.data.TensorLoader`)."""
    train_set = data.load(run.dataset, "train").subset(config["train_subset"], run.seed)
    train_set, holdout = train_set.split(config["holdout"], run.seed)
    x_val, y_val = holdout.tensors(run.device)
    loader = data.TensorLoader(train_set, config["batch_size"], shuffle=True, augment=config["augment"],
                               drop_last=True, device=run.device,
                               seed=run.seed if shuffle_seed is None else shuffle_seed,
                               images_per_epoch=config.get("images_per_epoch"))
    return loader, x_val, y_val


def test_set(run: Run, subset: int | None | str = "profile") -> tuple[torch.Tensor, torch.Tensor]:
    """The test images (floats in [0, 1]) and labels on the run's device; ``subset`` defaults to the
    profile's ``eval_subset``. A fixed random sample, the same in every chapter, and nested
    (:meth:`~advlib.data.ImageSet.sample`): the first m images of ``test_set(run, n)`` are
    ``test_set(run, m)``, so chapters 6-9's AutoAttack images are the leaderboard's."""
    n = run.config["eval_subset"] if subset == "profile" else subset
    return data.load(run.dataset, "test").sample(n, seed=0).tensors(run.device)


def autoattack_examples(run: Run, model_config: dict[str, Any], load: Callable[[], nn.Module], eps: float,
                        section: dict[str, Any], bpda: bool = False, verbose: bool = True) -> torch.Tensor:
    """AutoAttack's (standard) examples, on the CPU, of the first ``autoattack_subset`` (all if absent
    or None) of the ``eval_subset`` test images, crafted white-box on the model ``load()`` returns
    (with ``bpda``, on the BPDA version of that purified model), with the budgets of ``section``
    (a chapter's ``evaluation`` or the ``leaderboard``). Cached by what determines them, so chapter
    11's leaderboard reuses what chapters 6-9 computed whenever the settings agree; ``verbose=False``
    does not say whether they were loaded or computed."""
    x, y = test_set(run, section["eval_subset"])
    n = min(section.get("autoattack_subset") or len(x), len(x))

    def compute() -> dict[str, torch.Tensor]:
        model = folded(load())
        source = BPDAPurified(model.purifier, model.classifier).eval() if bpda else model
        return {"x_adv": craft(autoattack_standard(eps, section, run.seed), source, x[:n], y[:n])}

    return cache.load_or_compute("autoattack-examples", autoattack_key(run, model_config, eps, section, bpda, len(x)),
                                 compute, verbose=verbose)["x_adv"]


def autoattack_key(run: Run, model_config: dict[str, Any], eps: float, section: dict[str, Any], bpda: bool = False,
                   n_test: int | None = None) -> dict[str, Any]:
    """What determines :func:`autoattack_examples` (its cache key); ``n_test``, the number of
    ``eval_subset`` test images, is read from the data when not given. The first n images of a
    sampled ``eval_subset`` are the sample of n (:func:`test_set`), so the key records that sample's
    size: chapters 6-9 (500 evaluation images, AutoAttack on 150) and chapters 10-11 (150) share them;
    ``eval_subset=None`` is the test set in file order (the paper profile's "first 1000 images")."""
    if n_test is None:
        n_test = len(test_set(run, section["eval_subset"])[1])
    images = min(section.get("autoattack_subset") or n_test, n_test)
    return {"model": model_config, "eps": eps, "bpda": bpda,
            "eval_subset": None if section["eval_subset"] is None else images, "images": images,
            "iterations": section["autoattack_iterations"], "square_queries": section["square_queries"],
            "targets": section["autoattack_targets"], "seed": run.seed}


def held_out_robustness(model: nn.Module, x_val: torch.Tensor, y_val: torch.Tensor, attack: Any,
                        transfer_to: nn.Module | None = None) -> dict[str, float]:
    """The per-epoch curves of chapters 6-9: clean and PGD-10 accuracy on the held-out slice and,
    with ``transfer_to`` (chapter 7's teacher), the transfer rate of the PGD-10 examples of the
    images ``model`` classifies correctly."""
    correct = predict(model, x_val).argmax(1) == y_val
    x_adv = attack(model, x_val, y_val)
    record = {"val_clean": correct.float().mean().item(), "val_pgd10": accuracy(model, x_adv, y_val)}
    if transfer_to is not None:
        record["val_transfer"] = transfer_rate(model, transfer_to, x_adv[correct], y_val[correct])
    return record
