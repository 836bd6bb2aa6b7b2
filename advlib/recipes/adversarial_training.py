"""Chapters 6, 8 and 9: adversarially trained models — standard training, PGD-AT, TRADES, the other
baselines of DYNAT's Table 1 (MART, FAT, GAIRAT, AWP, LBGAT), DYNAT and its AWP variants, MAIL, the
DYNATs reweighted as GAIRAT and MAIL, and GAIRAT and DYNAT-Inner-GAIRAT with the guide and target
swapped (Tables 3-4) — and one row of DYNAT's tables for each."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import attacks, cache, defenses, distributed, papers
from ..config import Run
from ..evaluation import accuracy, reporting, robust_accuracy, robustness_outcomes
from ..training import fit
from .common import Method, autoattack_examples, held_out_robustness, network, test_set, training_data

# LBGAT and the DYNAT methods train a guide and a target together; labels are the paper's row names,
# and "(small target)" marks Table 3's rows that train the guide's network as target (ResNet-18 in the
# paper profile) instead of WRN-34-10.
AT_METHODS: dict[str, Method] = {m.name: m for m in (
    Method("standard", "Standard", "standard"),
    Method("pgd_at", "PGD-AT", "pgd_at", "pgd_at"),
    Method("trades", "TRADES", "trades", "trades"),
    Method("mart", "MART", "mart", "mart"),
    Method("fat", "FAT", "fat", "fat"),
    Method("gairat", "GAIRAT", "gairat", "gairat"),
    Method("awp", "AWP", "trades_awp", "awp"),
    Method("lbgat", "LBGAT", "lbgat", "lbgat"),
    Method("dynat", "DYNAT", "dynat", "dynat", {"inner": "dynamic"}),
    Method("dynat_no_inner", "DYNAT without inner optimisation", "dynat", "dynat", {"inner": "ground_truth"}),
    Method("dynat_awp_beta0", "DYNAT-AWP (β = 0)", "dynat_awp", "dynat_awp", {"beta": 0.0}),
    Method("dynat_awp", "DYNAT-AWP (β = 1)", "dynat_awp", "dynat_awp", {"beta": 1.0}),
    Method("dynat_inner_awp", "DYNAT-Inner-AWP (β = 1)", "dynat_inner_awp", "dynat_awp", {"beta": 1.0}),
    Method("mail", "MAIL", "mail", "mail"),
    Method("dynat_inner_gairat", "DYNAT-Inner-GAIRAT", "dynat_inner_gairat", "dynat_inner_gairat"),
    Method("gairat_small_target", "GAIRAT (small target)", "gairat", "gairat_small_target"),
    Method("dynat_inner_gairat_small_target", "DYNAT-Inner-GAIRAT (small target)", "dynat_inner_gairat",
           "dynat_inner_gairat_small_target"),
    Method("dynat_at_mail", "DYNAT-AT-MAIL", "dynat_mail", "dynat_mail", {"inner": "ground_truth"}),
    Method("dynat_mail_inner", "DYNAT-MAIL-Inner", "dynat_mail", "dynat_mail", {"inner": "dynamic"}),
)}

AT_COLUMNS = papers.DYNAT_COLUMNS

# the trainers of a GuideAndTarget pair
GUIDED_TRAINERS = ("lbgat", "dynat", "dynat_awp", "dynat_inner_awp", "dynat_inner_gairat", "dynat_mail")

# what chapter 9 trains: MAIL, DYNAT combined with GAIRAT and MAIL, and Table 3's GAIRAT and
# DYNAT-Inner-GAIRAT with the smaller network as target (DYNAT's Tables 3 and 4)
REWEIGHTING_METHODS = ("mail", "dynat_inner_gairat", "gairat_small_target",
                       "dynat_inner_gairat_small_target", "dynat_at_mail", "dynat_mail_inner")


def chapter_of(method: str) -> int:
    """The chapter that trains ``method`` (a key of :data:`AT_METHODS`): 9 for :data:`REWEIGHTING_METHODS`
    (MAIL, the reweighted DYNATs and Table 3's small-target rows), 8 for the other methods
    that train a guide, 6 for the rest."""
    if method in REWEIGHTING_METHODS:
        return 9
    return 8 if AT_METHODS[method].trainer in GUIDED_TRAINERS else 6


# Settings given as a fraction of training (so that they scale with the profile's epochs), and the
# trainer option each becomes: the first epoch, counted from 1, at or after that fraction.
_EPOCH_FRACTIONS = {"awp_start": "awp_from_epoch", "reweight_start": "reweight_from_epoch"}

_AT_TRAINING_KEYS = ("target", "normalize", "train_subset", "holdout", "batch_size", "epochs", "augment",
                     "optimizer", "schedule", "averaging")


def adversarial_training_config(run: Run, method: str) -> dict[str, Any]:
    """Everything that determines the weights of ``method`` trained under ``run``'s profile."""
    if method not in AT_METHODS:
        raise ValueError(f"unknown method {method!r}; known methods: {', '.join(AT_METHODS)}")
    spec = run.config["adversarial_training"]
    recipe = AT_METHODS[method]
    section = dict(spec[recipe.section]) if recipe.section is not None else {}
    # a method's own training settings (the paper profile's baselines), else the shared ones
    own_training = section.pop("training", {})
    config = {"method": method, "trainer": recipe.trainer, "dataset": run.dataset, "seed": run.seed,
              **{k: own_training.get(k, spec[k]) for k in _AT_TRAINING_KEYS}}
    if spec.get("images_per_epoch"):
        config["images_per_epoch"] = spec["images_per_epoch"]
    if recipe.section is not None:
        options = {**spec["train_attack"], **section, **recipe.fixed}
        if recipe.section == "dynat_awp":
            by_dataset = spec["dynat_awp_label_weight_by_dataset"]
            options["label_weight"] = by_dataset.get(run.dataset, options["label_weight"])
        for fraction, option in _EPOCH_FRACTIONS.items():
            if fraction in options:
                options[option] = first_epoch_at(options.pop(fraction), config["epochs"])
        if "tau_starts" in options:
            options["tau_from_epoch"] = [first_epoch_at(f, config["epochs"]) for f in options.pop("tau_starts")]
        config["trainer_options"] = options
    if recipe.trainer in GUIDED_TRAINERS:
        config["guide"] = own_training.get("guide", spec["guide"])
    return config


def first_epoch_at(fraction: float, epochs: int) -> int:
    """The epoch, counted from 1, that starts once ``fraction`` of ``epochs`` epochs are done (rounded):
    0.09 of 100 is epoch 10, 59/120 of 120 is epoch 60."""
    return round(fraction * epochs) + 1


def adversarially_trained(run: Run, method: str) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The model of ``method`` (a key of :data:`AT_METHODS`), in eval mode, with its per-epoch
    history: training loss/accuracy, clean and PGD-10 accuracy on a held-out slice of the training
    set and, for DYNAT, the guide's held-out accuracy and how often the dynamic labels
    argmax G(x) agreed with the ground truth during the epoch. DYNAT methods return the
    :class:`~advlib.defenses.dynat.GuideAndTarget` pair, whose forward pass is the target's."""
    config = adversarial_training_config(run, method)
    spec = run.config["adversarial_training"]

    def build(initialise: bool) -> nn.Module:
        target = network(run, "target", seed=run.seed, initialise=initialise, **config["target"])
        if "guide" not in config:
            return target
        guide = network(run, "guide", seed=run.seed + 1, initialise=initialise, **config["guide"])
        return defenses.dynat.GuideAndTarget(guide, target)

    trainer = defenses.build(config["trainer"], **config.get("trainer_options", {}), seed=run.seed)
    averaging = config["averaging"] and {**config["averaging"], "module": "target" if "guide" in config else None}

    def train(model: nn.Module, checkpoint) -> list[dict[str, Any]]:
        loader, x_val, y_val = training_data(run, config)
        val_attack = attacks.build("pgd", steps=10, **spec["eval_attack"], seed=run.seed)

        def evaluate(m: nn.Module) -> dict[str, float]:
            record = held_out_robustness(m, x_val, y_val, val_attack)
            if isinstance(m, defenses.dynat.GuideAndTarget):
                record["guide_val_acc"] = accuracy(m.guide, x_val, y_val)
            return record

        return fit(model, loader, epochs=config["epochs"], optimizer=config["optimizer"],
                   schedule=config["schedule"], loss_fn=trainer, checkpoint=checkpoint, evaluate=evaluate,
                   desc=method, averaging=averaging, sync_batchnorm=run.sync_batchnorm)

    model, history = cache.load_or_train(f"at-{method}", config, build, train,
                                         launch=distributed.launcher(run, "at", method))
    return model.eval(), history


def at_outcomes(run: Run, method: str) -> dict[str, torch.Tensor]:
    """Per test image, whether ``method`` (a key of :data:`AT_METHODS`) classifies it correctly clean
    and under PGD-10/20/50 and CW-∞ (each attack on its own, on the profile's ``eval_subset`` test
    images), under AutoAttack (standard) on the first ``autoattack_subset`` of them and PGD-20 on
    those same images, for the sanity check AA ≤ PGD-20
    (:func:`~advlib.evaluation.protocols.robustness_outcomes`). Cached like a trained model."""
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
        x_aa = autoattack_examples(run, config["model"], lambda: model, eps, evaluation)
        return robustness_outcomes(model, x, y, named, x_aa)

    return cache.load_or_compute("at-evaluation", config, compute)


def at_evaluation(run: Run, method: str) -> dict[str, Any]:
    """One row of DYNAT's Table 1 for ``method``: accuracy (in [0, 1]) with its 95 % interval, clean
    and under each attack of :func:`at_outcomes`, and how many images each column saw."""
    return reporting.outcome_row(at_outcomes(run, method), AT_METHODS[method].label)


def at_table(run: Run, methods: list[str], save: bool = False) -> list[dict[str, Any]]:
    """The rows of ``methods`` (:func:`at_evaluation`); with ``save`` (chapter 8, which holds every
    row) also written to ``at_dynat.json`` together with, in the paper profile, the rows of the
    seed's table for the dataset (Table 1 for CIFAR-10, Table 2 for CIFAR-100) labelled as the
    paper's. Every accuracy is a fraction in [0, 1]."""
    rows = [at_evaluation(run, method) for method in methods]
    if save:
        save_at_dynat(run, rows)
    return rows


def save_at_dynat(run: Run, rows: list[dict[str, Any]]) -> Any:
    """Write ``at_dynat.json``: our ``rows`` and, in the paper profile, the rows of the seed's table
    for the dataset, labelled as the paper's (accuracies as fractions, like ours)."""
    tables = [papers.DYNAT_TABLES[run.dataset]] if run.dataset in papers.DYNAT_TABLES else []
    return save_with_paper_rows(run, "at_dynat", rows, tables)


# DYNAT's Tables 3 and 4 (CIFAR-10 only) and the methods of each that the book trains
REWEIGHTING_TABLES: dict[str, tuple[dict[str, dict[str, float]], tuple[str, ...]]] = {
    "Table 3": (papers.DYNAT_TABLE3, ("gairat", "dynat_inner_gairat", "gairat_small_target",
                                      "dynat_inner_gairat_small_target")),
    "Table 4": (papers.DYNAT_TABLE4, ("pgd_at", "trades", "mart", "fat", "awp", "gairat", "mail", "dynat_at_mail",
                                      "dynat_mail_inner")),
}
# every method of the two tables, once, in table order: chapter 9's rows
REWEIGHTING_ROWS = tuple(dict.fromkeys(m for _, members in REWEIGHTING_TABLES.values() for m in members))


def table4_columns(run: Run) -> list[str]:
    """The columns that only DYNAT's Table 4 reports, as :func:`table4_outcomes` names them: PGD with
    the profile's step count (PGD-100 outside the smoke run) and APGD."""
    return [f"PGD-{run.config['adversarial_training']['table4_evaluation']['pgd_steps']}", "APGD"]


def table4_outcomes(run: Run, method: str) -> dict[str, torch.Tensor]:
    """Per test image, whether ``method`` classifies it correctly under the two attacks of DYNAT's
    Table 4 that its Table 1 lacks, each on its own, as MAIL's evaluation runs them: PGD with
    ``pgd_steps`` steps (Madry et al. 2018; the evaluation's ε and step, random start) and APGD on
    the cross-entropy (Croce & Hein 2020, Algorithm 1; ``apgd_iterations`` iterations, 1 restart),
    on the first ``subset`` of the evaluation's images (all where None; the table's header gives the
    count). Cached like a trained model."""
    spec = run.config["adversarial_training"]
    settings, evaluation = spec["table4_evaluation"], spec["evaluation"]
    config = {"model": adversarial_training_config(run, method), **settings,
              "eval_subset": evaluation["eval_subset"], "eval_attack": spec["eval_attack"]}

    def compute() -> dict[str, torch.Tensor]:
        model, _ = adversarially_trained(run, method)
        x, y = test_set(run, evaluation["eval_subset"])
        n = min(settings["subset"] or len(x), len(x))
        eps, alpha = spec["eval_attack"]["eps"], spec["eval_attack"]["alpha"]
        pgd_column, apgd_column = table4_columns(run)
        named = {pgd_column: attacks.build("pgd", eps=eps, alpha=alpha, steps=settings["pgd_steps"], seed=run.seed),
                 apgd_column: attacks.build("apgd-ce", eps=eps, n_iter=settings["apgd_iterations"], seed=run.seed)}
        report = robust_accuracy(model, x[:n], y[:n], named, cascade=False)
        return {"clean (Table 4 images)": report.clean, **report.per_attack}

    return cache.load_or_compute("at-evaluation-table4", config, compute)


def reweighting_outcomes(run: Run, method: str) -> dict[str, torch.Tensor]:
    """:func:`at_outcomes` of ``method`` and, for a method of DYNAT's Table 4, its
    :func:`table4_outcomes` too."""
    outcomes = at_outcomes(run, method)
    if method in REWEIGHTING_TABLES["Table 4"][1]:
        outcomes = {**outcomes, **table4_outcomes(run, method)}
    return outcomes


def reweighting_table(run: Run, save: bool = False) -> list[dict[str, Any]]:
    """The rows of every method of DYNAT's Tables 3 and 4 (chapter 9): :func:`at_evaluation`'s
    columns and, for the methods of Table 4, its PGD-100 and APGD (:func:`table4_outcomes`); with
    ``save`` also written to ``at_dynat_reweighting.json`` together with, in the paper profile on
    CIFAR-10, the rows of both tables labelled as the paper's."""
    rows = [reporting.outcome_row(reweighting_outcomes(run, method), AT_METHODS[method].label)
            for method in REWEIGHTING_ROWS]
    if save:
        tables = [(name, table) for name, (table, _) in REWEIGHTING_TABLES.items()] if run.dataset == "cifar10" else []
        save_with_paper_rows(run, "at_dynat_reweighting", rows, tables)
    return rows


def save_with_paper_rows(run: Run, name: str, rows: list[dict[str, Any]],
                         tables: list[tuple[str, dict[str, dict[str, float]]]]) -> Any:
    """Write the results file ``name``: our ``rows`` and, in the paper profile, the rows of each
    ``(table name, table)`` of the seed labelled as the paper's (accuracies as fractions, like ours)."""
    table = list(rows)
    if run.profile == "paper":
        for table_name, paper_rows in tables:
            table += [{"method": method, "source": f"paper ({table_name})", **{k: v / 100 for k, v in values.items()}}
                      for method, values in paper_rows.items()]
    return run.save_results(name, table)
