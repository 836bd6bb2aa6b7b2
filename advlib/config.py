"""Profiles, devices and the set-up banner that opens every notebook (chapter 1).

Two profiles fix every hyperparameter of the book:

* ``quick`` — CPU, Fashion-MNIST, small subsets and few epochs: minutes per chapter. CI runs it and
  the rendered book shows it. Its numbers teach the method; they are not the papers' numbers.
* ``paper`` — GPU, CIFAR-10, the seeds' hyperparameters.

Learning-rate schedules are piecewise functions of training progress (0 at the start, 1 at the
end), so changing ``epochs`` keeps their shape.
"""
from __future__ import annotations

import copy
import contextlib
import platform
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from . import paths

# GAIRAT's authors' schedule (GAIRAT.py): lr ×0.1 from epoch 60 of 120, ×0.01 from 90, ×0.005 from 110
GAIRAT_SCHEDULE = {"interpolate": "step", "points": [[0.0, 1.0], [59 / 120, 0.1], [89 / 120, 0.01], [109 / 120, 0.005]]}
# MAIL's authors' training (QizhouWang/MAIL train.py), shared by the paper profile's MAIL rows (each
# entry takes its own copy, so that an override of one leaves the others alone)
MAIL_TRAINING = {"target": {"arch": "resnet18_cifar"}, "epochs": 120,
                 "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 3.5e-3},
                 "schedule": {"interpolate": "step",
                              "points": [[0.0, 1.0], [75 / 120, 0.1], [90 / 120, 0.01], [100 / 120, 0.001]]}}

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "description": "CPU-sized: Fashion-MNIST, training subsets and few epochs; numbers are illustrative, "
                       "not the papers'",
        "dataset": "fashion-mnist",
        "eval_subset": 1000,
        "classifier": {
            # three epochs, for the 45-minute CI budget: 98 s instead of about 150 s on two cores, for
            # 88.9 % test accuracy instead of 90.0 %
            "arch": "resnet20", "epochs": 3, "batch_size": 128, "train_subset": 20000, "holdout": 1000,
            "augment": True,
            "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True},
            # one-cycle: linear warm-up over the first fifth, then linear decay to zero
            "schedule": {"interpolate": "linear", "points": [[0.0, 0.1], [0.2, 1.0], [1.0, 0.0]]},
        },
        # Chapter 2: how many test images each attack sees (CW-L2 and AutoAttack on the first ones)
        "attacks": {"eval_subset": 100, "cw_subset": 16, "autoattack_subset": 32, "autoattack_iterations": 100,
                    "square_queries": 5000},
        "purification": {
            "autoencoder": {"width": 32, "blocks": 5, "skip_every": 2, "stride": 2},
            # 3 epochs each, for the CI budget: the student kept 68.5 % under PGD8 (400 test images) as
            # with 4, at 86.0 % clean accuracy instead of 87.5 %, and the seven trainings of chapters 3-5
            # took about 50 s less
            "train_subset": 5000, "batch_size": 128, "teacher_epochs": 3, "student_epochs": 3,
            # Adam at the paper's 0.01 is unstable for a few hundred steps on the CPU subset
            "optimizer": {"name": "adam", "lr": 0.002},
            "schedule": {"interpolate": "linear", "points": [[0.0, 1.0], [1.0, 0.1]]},
            "train_attack": {"name": "pgd", "eps": 8 / 255, "alpha": 2 / 255, "steps": 10},
            # Sec. 3.3: the AT teacher is given x', the NT teacher the clean image
            "beta": 0.5, "gamma": 0.5, "kd_space": "pixels", "nt_sees_clean": True,
            "eval_subset": 400, "autoattack_subset": 100,
            # the gray-box AutoAttack of Tables 1-2 with the reference's budgets
            "autoattack_iterations": 100, "square_queries": 5000,
            # Table 1's SOAP column (SOAP-RP, Shi et al. 2021): a width-8 CNN with a rotation head,
            # trained on the purifiers' training images; the paper's test-time purification (5 sign
            # steps of 4/255) with the budget ε_pfy chosen per image between 0 and 16/255. Each
            # budget is a purification of its own: with the paper profile's six, Table 1's column
            # took 16 s per 400 images, and with 0, 8 and 16/255 every one of 400 clean and 200 PGD8
            # test images took 16/255, so the others only cost time
            "soap": {"network": {"arch": "small_cnn", "width": 8}, "alpha": 0.5, "noise_sigma": 0.1,
                     "train_subset": 5000, "holdout": 500, "batch_size": 128, "epochs": 4, "augment": False,
                     "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 5e-4},
                     "schedule": {"interpolate": "linear", "points": [[0.0, 1.0], [1.0, 0.1]]},
                     "budgets": [0.0, 16 / 255], "step_size": 4 / 255, "steps": 5},
            # Table 1's NRP column (Naseer et al. 2020): one RRDB of 8 channels (growth 4) instead of
            # 23 of 64 (with 16 and 8, AutoAttack through f∘NRP cost a third more for 1 point of PGD8
            # accuracy less, 57 % instead of 58 %, on 400 test images), trained for 2 epochs on the purifiers' training images against SSP examples of
            # 5 steps (ε 16/255 and step 0.01, as NRP's). ImageNet's VGG-16 is not here offline, so F is
            # the first two stages of a width-8 CNN trained on those images (a network other than f, as
            # VGG-16 is). With one SSP step and Adam at 1e-3, NRP raised SSP's feature distortion
            # (0.016 to 0.018 on 200 test images); with 5 steps and 4e-3 it halved it (0.051 to 0.026),
            # for 5 s more training
            "nrp": {"purifier": {"channels": 8, "blocks": 1, "growth": 4}, "critic": {"width": 16, "stages": 2},
                    "features": {"arch": "small_cnn", "width": 8, "stages": 2, "epochs": 2, "batch_size": 128,
                                 "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 5e-4},
                                 "schedule": {"interpolate": "linear", "points": [[0.0, 1.0], [1.0, 0.1]]}},
                    "eps": 16 / 255, "step_size": 0.01, "steps": 5,
                    "adversarial_weight": 5e-3, "pixel_weight": 1e-2, "feature_weight": 1.0,
                    "batch_size": 64, "epochs": 2, "images_per_epoch": None,
                    # ESRGAN's 1e-4 is for 400 000 steps; these are 140
                    "optimizer": {"name": "adam", "lr": 4e-3, "betas": [0.9, 0.99]},
                    "schedule": {"interpolate": "linear", "points": [[0.0, 1.0], [1.0, 0.1]]}},
        },
        "adversarial_training": {
            # Chapters 6 and 8, sized for two CPU cores: a small CNN target, a narrower guide, four
            # epochs of 18 batches. The epochs take turns through 9 216 training images (200 more
            # are held out), each seen once: four times the images of four passes over 2 200, in
            # the same training time (longer training does not fit the chapters' five minutes:
            # two passes over 9 400 images took chapter 8 from 169 to 291 s). ε = 0.1, the usual
            # Fashion-MNIST budget: at 8/255 a standard CNN keeps about half its accuracy under
            # PGD-20 on Fashion-MNIST, so the chapters
            # could not show what adversarial training buys. 3 training PGD steps of 0.04 reach the
            # boundary; the evaluation step is ε/4, as 2/255 is for 8/255.
            "target": {"arch": "small_cnn", "width": 16}, "guide": {"arch": "small_cnn", "width": 8},
            "normalize": True, "train_subset": 9416, "holdout": 200, "batch_size": 128, "epochs": 4,
            "images_per_epoch": 2304,
            "augment": False,
            # lr 0.1 diverges for this CNN (no global pooling: a 2048-input linear head)
            "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 2e-4},
            # the paper's shape: a gentle first stretch, then the full rate, then a tenfold drop
            "schedule": {"interpolate": "step", "points": [[0.0, 0.2], [0.25, 1.0], [0.75, 0.1]]},
            "averaging": None,
            "train_attack": {"eps": 0.1, "alpha": 0.04, "steps": 3},
            "pgd_at": {"bn_mode": "train"}, "trades": {"beta": 6.0}, "dynat": {"label_weight": 1.0},
            "dynat_awp": {"label_weight": 1.0, "beta": 1.0, "awp_gamma": 0.005, "awp_start": 0.25},
            # Table 1's other baselines with their papers' loss settings on the shared budget above;
            # AWP starts after the first quarter, as DYNAT-AWP's AWP does; GAIRAT's weights (and MAIL's
            # below) start at the learning rate's drop, three quarters in, as in both authors' scripts,
            # whose weights start at the first decay (GAIRAT epoch 60; MAIL 77, after the decay at 76):
            # started a quarter in, at the full rate, MAIL's training loss jumped from 2.5 to 5.7 and
            # DYNAT-MAIL-Inner ended at 30 % clean accuracy. FAT's τ grows at the authors' fractions of
            # training (epochs 51 and 91 of 120).
            # MART and LBGAT train at half the learning rate: at the shared one their losses diverged
            # in the first epoch at full rate (training loss 8 and 19, held-out clean accuracy 21 % and
            # 13 %; MART's authors also lower the rate tenfold for their ResNet-18)
            "mart": {"beta": 6.0, "training": {"optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9,
                                                             "weight_decay": 2e-4}}},
            "fat": {"tau": 0, "tau_starts": [50 / 120, 90 / 120]},
            "gairat": {"lam": -1.0, "reweight_start": 0.75},
            "awp": {"beta": 6.0, "awp_gamma": 0.005, "awp_start": 0.25},
            "lbgat": {"beta": 0.0, "training": {"optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9,
                                                              "weight_decay": 2e-4}}},
            # Tables 3-4 (chapter 9): MAIL-AT's γ and β, DYNAT-Inner-GAIRAT's label smoothing
            "mail": {"gamma": 10.0, "bias": -0.5, "reweight_start": 0.75},
            "dynat_mail": {"gamma": 10.0, "bias": -0.5, "reweight_start": 0.75},
            "dynat_inner_gairat": {"lam": -1.0, "label_smoothing": 0.2, "reweight_start": 0.75},
            # Table 3's "(small target)" rows, a ResNet-18 target (and, for DYNAT, a WRN-34-10 guide) in
            # the paper: the two networks swapped, a width-8 target guided by a width-16 one
            "gairat_small_target": {"lam": -1.0, "reweight_start": 0.75,
                                    "training": {"target": {"arch": "small_cnn", "width": 8}}},
            "dynat_inner_gairat_small_target": {"lam": -1.0, "label_smoothing": 0.2, "reweight_start": 0.75,
                                                "training": {"target": {"arch": "small_cnn", "width": 8},
                                                             "guide": {"arch": "small_cnn", "width": 16}}},
            "dynat_awp_label_weight_by_dataset": {"cifar100": 0.2},
            "eval_attack": {"eps": 0.1, "alpha": 0.025},
            # Every attack on its own on 500 test images; AutoAttack on the first 150 of them (the
            # leaderboard's 150), with PGD-20 on those same images. On 1000 images, PGD-50 and CW-∞
            # cost each model about 17 s, and the 25 models of chapters 6-9 took the CI run past 45
            # minutes (2 816 s at e895f6c); on 500 a 95 % interval is about ±4.4 points instead of
            # ±3.1. With the reference's budgets AutoAttack costs ~1 CPU-second per robust image
            # here, so its budgets are cut as the leaderboard's (see there; the chapters share its
            # cached examples)
            "evaluation": {"eval_subset": 500, "autoattack_subset": 150, "cw_steps": 20, "cw_restarts": 1,
                           "autoattack_iterations": 25, "square_queries": 300,
                           "autoattack_targets": 3},
            # Table 4's own columns (chapter 9): PGD-100 and APGD-CE with 100 iterations, at full
            # length but on the first 100 of AutoAttack's images only: on 200 they cost chapter 9
            # 54 s and took the CI run past 45 minutes
            "table4_evaluation": {"subset": 100, "pgd_steps": 100, "apgd_iterations": 100},
        },
        "distillation": {
            # Chapter 7: chapter 6's TRADES CNN (width 16) teaches a width-8 student on the same data
            # budget and the same ε as chapters 6 and 8. Six epochs so that SWA (from 47.5 % of
            # training, SAAD's epoch 95 of 200) averages four of them; as there, epochs of 18
            # batches take turns through the training images (13 824, each seen once).
            "teacher": "trades", "robustbench_teacher": None,
            "student": {"arch": "small_cnn", "width": 8},
            "normalize": True, "train_subset": 14024, "holdout": 200, "batch_size": 128, "epochs": 6,
            "images_per_epoch": 2304,
            "augment": False,
            "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 2e-4},
            # one tenfold drop at 75 %: the paper's drops at 50 % and 75 % leave six epochs too little
            # training at the full rate (every student, the baselines too, lost 5 to 10 PGD-20 points)
            "schedule": {"interpolate": "step", "points": [[0.0, 0.2], [0.2, 1.0], [0.75, 0.1]]},
            "train_attack": {"eps": 0.1, "alpha": 0.04, "steps": 3},
            "ard": {"temperature": 1.0, "ce_weight": 0.0}, "rslad": {"adversarial_weight": 5 / 6},
            "adaad": {}, "igdm": {"igdm_weight": 1.0},
            "saad": {"lam": 1.0, "renyi_order": 1.0, "igdm_weight": 1.0, "clean_weight": 0.0},
            "igdm_weight_by_dataset": {"cifar100": 10.0},
            "averaging": {"kind": "swa", "start": 0.475, "every": "epoch"}, "average_baselines": False,
            # SAAD retrained with 3 student seeds (same teacher and images): how much is seed noise
            "seed_spread": {"method": "saad", "seeds": 3},
            "eval_attack": {"eps": 0.1, "alpha": 0.025},
            # as in chapters 6 and 8: 500 test images, AutoAttack (cut budgets) on the first 150
            "evaluation": {"eval_subset": 500, "autoattack_subset": 150, "cw_steps": 20, "cw_restarts": 1,
                           "autoattack_iterations": 25, "square_queries": 300,
                           "autoattack_targets": 3},
        },
        "leaderboard": {
            # Chapters 10 and 11: AutoAttack (standard) on the same 150 test images for every defence, at the
            # purifier's 8/255 and at the adversarial chapters' 0.1 (the purifiers at the 8/255 they
            # were trained for only); the checklist on 30 of them. 150, not 200, since NRP joined the
            # purifiers: its white-box and BPDA AutoAttacks took 164 s, and the CI run 2 999 s at
            # dfe5ba3 with 200 (a 95 % interval at 50 % is ±8.0 points on 150 images, ±6.9 on 200).
            # The reference's budgets (100 iterations, 9 target classes, 5000 queries) for every row
            # do not fit in minutes on two CPU cores: APGD-T and FAB-T cost one pass per iteration
            # and target. With 10 iterations AutoAttack came out 5 points above PGD-20 on chapter
            # 6's standard model (weaker than one of its own columns); with 25 iterations no image
            # survived AutoAttack that PGD-20 or CW-∞ fooled on the models we measured (chapter 6's
            # standard and TRADES, with 300 or more queries). The targeted attacks try the 3 most
            # likely wrong classes, a third of the cost; with 9 instead, every AA number of chapters 6
            # and 7 came out the same (measured with 500 queries). Chapters 6-8 print the AA ≤ PGD-20
            # check for every row.
            "eval_subset": 150, "epsilons": [8 / 255, 0.1], "autoattack_iterations": 25, "square_queries": 300,
            "autoattack_targets": 3,
            # At the purifiers' 8/255 the other defences are ranked by a reference set: the undefended
            # classifier, the two classic adversarial trainings and the methods of the two other seed
            # papers. With all 25 AT and distilled models (about 8 s of AutoAttack each) the CI run took
            # 2 901 s; every model is ranked at 0.1, the ε it was trained for.
            "compared_at_purifier_eps": ["PGD-AT", "TRADES", "DYNAT", "student: SAAD"],
            "check_subset": 30, "check_steps": 20, "large_eps": 0.5, "check_square_queries": 300,
        },
    },
    "paper": {
        "description": "GPU-sized: CIFAR-10 and the hyperparameters of the seed papers",
        "dataset": "cifar10",
        "eval_subset": None,
        "classifier": {
            # He et al. 2016, Sec. 4.2: 64k iterations of batch 128 (~164 epochs), lr /10 at 50 % and 75 %.
            "arch": "resnet56", "epochs": 164, "batch_size": 128, "train_subset": None, "holdout": 5000,
            "augment": True,
            "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "nesterov": False},
            "schedule": {"interpolate": "step", "points": [[0.0, 1.0], [0.5, 0.1], [0.75, 0.01]]},
        },
        "attacks": {"eval_subset": 1000, "cw_subset": 200, "autoattack_subset": 1000, "autoattack_iterations": 100,
                    "square_queries": 5000},
        "purification": {
            # Koo et al. 2023, Sec. 4.1: Adam, lr 0.01, batch 128, teachers 100 epochs, student 40.
            # The architecture's widths/strides and the training PGD's steps are not in the paper.
            "autoencoder": {"width": 64, "blocks": 15, "skip_every": 2, "stride": 2},
            "train_subset": None, "batch_size": 128, "teacher_epochs": 100, "student_epochs": 40,
            "optimizer": {"name": "adam", "lr": 0.01},
            "schedule": {"interpolate": "step", "points": [[0.0, 1.0]]},
            "train_attack": {"name": "pgd", "eps": 8 / 255, "alpha": 2 / 255, "steps": 10},
            # Sec. 3.3: the AT teacher is given x', the NT teacher the clean image
            "beta": 0.5, "gamma": 0.5, "kd_space": "pixels", "nt_sees_clean": True,
            "eval_subset": None, "autoattack_subset": None,
            "autoattack_iterations": 100, "square_queries": 5000,
            # SOAP-RP (Shi et al. 2021): a ResNet-18 with a linear rotation head on its pooled features
            # (Sec. 3.4), L_cls + α·L_aux on images with Gaussian noise σ = 0.1 (Sec. 4); at test time 5
            # sign steps of 4/255, ε_pfy per image the smallest minimiser of the auxiliary loss among
            # 0, 4, …, 20/255 (the code's grid runs to 40/255, where 5 steps of 4/255 purify alike).
            # Training as the authors' code (main.py, datasets.py): SGD lr 0.1, momentum 0.9, wd 1e-4,
            # batch 128, crop+flip, lr /10 halfway through 200 epochs; α = 0.5 as their CIFAR-10
            # rotation run (the paper's text gives no α). The held-out slice is ours.
            "soap": {"network": {"arch": "resnet18"}, "alpha": 0.5, "noise_sigma": 0.1,
                     "train_subset": None, "holdout": 1000, "batch_size": 128, "epochs": 200, "augment": True,
                     "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
                     "schedule": {"interpolate": "step", "points": [[0.0, 1.0], [0.5, 0.1]]},
                     "budgets": [k * 4 / 255 for k in range(6)], "step_size": 4 / 255, "steps": 5},
            # NRP (Naseer et al. 2020): the released NRP(3, 3, 64, 23) and SSP as the released ssp.py
            # (VGG-16 relu3_3 with ImageNet weights, ε 16/255, 100 sign steps of 0.01); α, γ, λ, Adam
            # and batch 16 are ESRGAN's (NRP's trainer is BasicSR's, whose ESRGAN halves the rate at
            # 1/8, 1/4, 1/2 and 3/4 of training). NRP was trained on 25k MS-COCO images; Koo et al.'s
            # purifiers all learn from CIFAR-10's training set, so NRP does here, for 50 epochs (ours)
            "nrp": {"purifier": {"channels": 64, "blocks": 23, "growth": 32}, "critic": {"width": 64, "stages": 3},
                    "features": {"arch": "vgg16"},
                    "eps": 16 / 255, "step_size": 0.01, "steps": 100,
                    "adversarial_weight": 5e-3, "pixel_weight": 1e-2, "feature_weight": 1.0,
                    "batch_size": 16, "epochs": 50, "images_per_epoch": None,
                    "optimizer": {"name": "adam", "lr": 1e-4, "betas": [0.9, 0.99]},
                    "schedule": {"interpolate": "step",
                                 "points": [[0.0, 1.0], [0.125, 0.5], [0.25, 0.25], [0.5, 0.125], [0.75, 0.0625]]}},
        },
        "adversarial_training": {
            # Seed 002, Sec. 4.1 and the authors' code (notes §3): WRN-34-10 target, LBGAT's
            # ResNet18_cifar guide, no input normalisation, SGD lr 0.1 (0.02 in epoch 1), momentum 0.9,
            # wd 2e-4, batch 128, 100 epochs, lr 0.01 from epoch 76 and 0.001 from 91; training PGD
            # ε 0.031, 10 steps of 2/255 (Sec. 4.1; the authors' scripts step 0.007, TRADES's value).
            # The held-out slice for per-epoch curves is ours.
            "target": {"arch": "wrn34_10"}, "guide": {"arch": "resnet18_cifar"},
            "normalize": False, "train_subset": None, "holdout": 1000, "batch_size": 128, "epochs": 100,
            "augment": True,
            "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4},
            "schedule": {"interpolate": "step", "points": [[0.0, 0.2], [0.01, 1.0], [0.75, 0.1], [0.9, 0.01]]},
            "averaging": None,
            "train_attack": {"eps": 0.031, "alpha": 2 / 255, "steps": 10},
            "pgd_at": {"bn_mode": "train"}, "trades": {"beta": 6.0}, "dynat": {"label_weight": 1.0},
            # DYNAT-AWP / DYNAT-Inner-AWP: λ = 1 on CIFAR-10 (Sec. 4.1); 0.2 in the authors' only AWP
            # script, which trains CIFAR-100
            # AWP from epoch 10 of 100: after 9 % of training (a fraction, so that it scales with epochs)
            "dynat_awp": {"label_weight": 1.0, "beta": 1.0, "awp_gamma": 0.005, "awp_start": 0.09},
            # Table 1's other baselines, each with its own authors' CIFAR-10 settings (the target stays
            # WRN-34-10, as in Table 1; batch 128, momentum 0.9). "training" replaces the shared
            # settings above; schedule points are fractions of training at which an epoch starts.
            # MART: YisenWang/MART train_wideresnet.py: 90 epochs, lr 0.1, wd 7e-4, lr /10 from epoch
            # 75 and /100 from 90; β = 6; ε 0.031, step 0.007, 0.001·N(0, I) start.
            "mart": {"beta": 6.0, "eps": 0.031, "alpha": 0.007,
                     "training": {"epochs": 90,
                                  "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 7e-4},
                                  "schedule": {"interpolate": "step",
                                               "points": [[0.0, 1.0], [74 / 90, 0.1], [89 / 90, 0.01]]}}},
            # FAT (for PGD-AT): zjfheart/Friendly-Adversarial-Training FAT.py: 120 epochs, lr 0.1, wd
            # 2e-4, lr ×0.1 from epoch 60, ×0.01 from 90, ×0.005 from 110; τ 0, 1 from epoch 51, 2 from 91
            "fat": {"tau": 0, "tau_starts": [50 / 120, 90 / 120], "eps": 0.031, "alpha": 0.007,
                    "training": {"epochs": 120,
                                 "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4},
                                 "schedule": {"interpolate": "step", "points": [
                                     [0.0, 1.0], [59 / 120, 0.1], [89 / 120, 0.01], [109 / 120, 0.005]]}}},
            # GAIRAT: zjfheart/Geometry-aware-Instance-reweighted-Adversarial-Training GAIRAT.py: 120
            # epochs, lr 0.1, wd 2e-4, lr ×0.1 from epoch 60, ×0.01 from 90, ×0.005 from 110; λ = −1
            # fixed, Tanh weights from epoch 60
            "gairat": {"lam": -1.0, "reweight_start": 59 / 120, "eps": 0.031, "alpha": 0.007,
                       "training": {"epochs": 120,
                                    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4},
                                    "schedule": copy.deepcopy(GAIRAT_SCHEDULE)}},
            # AWP (TRADES-AWP): csdongxian/AWP trades_AWP/train_trades_cifar.py: 200 epochs, lr 0.1,
            # wd 5e-4, lr /10 from epoch 100 and /100 from 150; β = 6, γ = 0.005 from epoch 10;
            # ε 8/255, step 2/255
            "awp": {"beta": 6.0, "awp_gamma": 0.005, "awp_start": 9 / 200, "eps": 8 / 255, "alpha": 2 / 255,
                    "training": {"epochs": 200,
                                 "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
                                 "schedule": {"interpolate": "step",
                                              "points": [[0.0, 1.0], [99 / 200, 0.1], [149 / 200, 0.01]]}}},
            # LBGAT0: dvlab-research/LBGAT train_lbgat_cifar100.py (its CIFAR-10 models change only
            # the data): DYNAT's settings above (DYNAT took them from LBGAT), ResNet18_cifar guide,
            # ε 0.031, step 0.007; β = 0 is the LBGAT row of Table 1 (88.22 % clean)
            "lbgat": {"beta": 0.0, "eps": 0.031, "alpha": 0.007},
            # MAIL (MAIL-AT, the MAIL row of Table 4): QizhouWang/MAIL train.py and its README's MAIL-AT
            # recipe: ResNet-18, 120 epochs, lr 0.01, wd 3.5e-3, lr ×0.1 from epoch 76, ×0.01 from 91,
            # ×0.001 from 101; γ = 10, β = −0.5, weights from epoch 77; ε 0.031, step 0.007
            "mail": {"gamma": 10.0, "bias": -0.5, "reweight_start": 76 / 120, "eps": 0.031, "alpha": 0.007,
                     "training": copy.deepcopy(MAIL_TRAINING)},
            # DYNAT-AT-MAIL and DYNAT-MAIL-Inner (Sec. 4.4, Table 4): MAIL's settings, a WRN-34-10 guide
            # for the ResNet-18 target
            "dynat_mail": {"gamma": 10.0, "bias": -0.5, "reweight_start": 76 / 120, "eps": 0.031, "alpha": 0.007,
                           "training": {**copy.deepcopy(MAIL_TRAINING), "guide": {"arch": "wrn34_10"}}},
            # DYNAT-Inner-GAIRAT (Sec. 4.3, Table 3's WRN-34-10 rows): GAIRAT's settings (above) with
            # weight decay 5e-4, label smoothing 0.2 and the weights after a 70-epoch burn-in; the
            # ResNet-18 guide and WRN-34-10 target of Table 1
            "dynat_inner_gairat": {"lam": -1.0, "label_smoothing": 0.2, "reweight_start": 70 / 120, "eps": 0.031,
                                   "alpha": 0.007,
                                   "training": {"epochs": 120,
                                                "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9,
                                                              "weight_decay": 5e-4},
                                                "schedule": copy.deepcopy(GAIRAT_SCHEDULE)}},
            # Table 3's "(small target)" rows (Sec. 4.3, "swapped the guiding and target model types"):
            # GAIRAT and DYNAT-Inner-GAIRAT as above with a ResNet-18 target, and a WRN-34-10 guide. Both
            # targets are DYNAT's ResNet18_cifar (the guide's network, as in the MAIL rows), so that the
            # pair compares like with like; GAIRAT's own code trains kuangliu's ResNet-18 (``resnet18``)
            "gairat_small_target": {"lam": -1.0, "reweight_start": 59 / 120, "eps": 0.031, "alpha": 0.007,
                                    "training": {"epochs": 120, "target": {"arch": "resnet18_cifar"},
                                                 "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9,
                                                               "weight_decay": 2e-4},
                                                 "schedule": copy.deepcopy(GAIRAT_SCHEDULE)}},
            "dynat_inner_gairat_small_target": {
                "lam": -1.0, "label_smoothing": 0.2, "reweight_start": 70 / 120, "eps": 0.031, "alpha": 0.007,
                "training": {"epochs": 120, "target": {"arch": "resnet18_cifar"}, "guide": {"arch": "wrn34_10"},
                             "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
                             "schedule": copy.deepcopy(GAIRAT_SCHEDULE)}},
            "dynat_awp_label_weight_by_dataset": {"cifar100": 0.2},
            # the authors' evaluation script: ε 8/255, step 2/255, uniform random start, 1 restart;
            # CW-∞ 20 steps; AutoAttack on the first 1000 test images. (Its PGD also freezes each
            # image once fooled; ours returns the last iterate, as Madry et al.'s PGD does.)
            "eval_attack": {"eps": 8 / 255, "alpha": 2 / 255},
            "evaluation": {"eval_subset": None, "autoattack_subset": 1000, "cw_steps": 20, "cw_restarts": 1,
                           "autoattack_iterations": 100, "square_queries": 5000,
                           "autoattack_targets": 9},
            # Table 4's own columns, as MAIL's evaluation (whose settings Table 4 follows): PGD-100
            # (ε 8/255, step 2/255, random start) and APGD on the cross-entropy (Croce & Hein 2020,
            # 100 iterations, 1 restart), on every evaluation image
            "table4_evaluation": {"subset": None, "pgd_steps": 100, "apgd_iterations": 100},
        },
        "distillation": {
            # Seed 001 and the authors' code (notes §2): ResNet-18 student (``mobilenetv2`` the other),
            # no input normalisation, crop+flip, SGD lr 0.1, momentum 0.9, wd 2e-4, batch 128, 200
            # epochs, lr /10 at epochs 100 and 150; ε 8/255, step 2/255, 10 steps for every method;
            # SWA of SAAD's student at the end of every epoch from 95 on. The teacher is chapter 6's
            # TRADES WRN-34-10, or a RobustBench model by name (the paper's: Gowal2021Improving_28_10_ddpm_100m).
            # The held-out slice for the per-epoch curves is ours. CW-∞: 50 steps and 10 restarts, as
            # the authors' script.
            "teacher": "trades", "robustbench_teacher": None,
            "student": {"arch": "resnet18"},
            "normalize": False, "train_subset": None, "holdout": 1000, "batch_size": 128, "epochs": 200,
            "augment": True,
            "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4},
            "schedule": {"interpolate": "step", "points": [[0.0, 1.0], [0.5, 0.1], [0.75, 0.01]]},
            "train_attack": {"eps": 8 / 255, "alpha": 2 / 255, "steps": 10},
            "ard": {"temperature": 1.0, "ce_weight": 0.0}, "rslad": {"adversarial_weight": 5 / 6},
            "adaad": {}, "igdm": {"igdm_weight": 1.0},
            "saad": {"lam": 1.0, "renyi_order": 1.0, "igdm_weight": 1.0, "clean_weight": 0.0},
            # IGDM's α (in IGDM and SAAD) is 10 on CIFAR-100 in the authors' scripts
            "igdm_weight_by_dataset": {"cifar100": 10.0},
            "averaging": {"kind": "swa", "start": 0.475, "every": "epoch"}, "average_baselines": False,
            # one seed: each further SAAD student is another 200-epoch training; set "seeds": 3 to
            # measure the seed noise of the reproduction
            "seed_spread": {"method": "saad", "seeds": 1},
            "eval_attack": {"eps": 8 / 255, "alpha": 2 / 255},
            "evaluation": {"eval_subset": None, "autoattack_subset": None, "cw_steps": 50, "cw_restarts": 10,
                           "autoattack_iterations": 100, "square_queries": 5000,
                           "autoattack_targets": 9},
        },
        "leaderboard": {
            # Chapters 10 and 11: AutoAttack on the same 1000 test images for every defence at 8/255
            "eval_subset": 1000, "epsilons": [8 / 255], "autoattack_iterations": 100, "square_queries": 5000,
            "autoattack_targets": 9, "compared_at_purifier_eps": None,
            "check_subset": 500, "check_steps": 20, "large_eps": 0.5, "check_square_queries": 5000,
        },
    },
}

# CI's paper smoke run (``make paper-smoke``): the paper profile with only its *sizes* cut, so that
# every chapter runs on two CPU cores in minutes on small synthetic CIFAR-format data. Architectures,
# losses, optimisers, schedules (fractions of training), training attacks and evaluation attacks
# stay the paper profile's; what changes is epochs, training/held-out/evaluation subsets, batch
# sizes, the iteration/query counts of the evaluation attacks, the training attacks' step counts
# in chapters 6-9 (2 of 10: a loop bound, and most of a smoke training's time),
# SOAP's purification steps and candidate budgets, and NRP's SSP steps.
PAPER_SMOKE_OVERRIDES: dict[str, Any] = {
    "eval_subset": 48,
    "attacks.eval_subset": 48, "attacks.cw_subset": 8, "attacks.autoattack_subset": 16,
    "attacks.autoattack_iterations": 5, "attacks.square_queries": 20,
    "classifier.epochs": 3, "classifier.train_subset": 1024, "classifier.holdout": 64,
    "classifier.batch_size": 64,
    "purification.train_subset": 192, "purification.batch_size": 16, "purification.teacher_epochs": 1,
    "purification.student_epochs": 1, "purification.eval_subset": 8, "purification.autoattack_subset": 4,
    "purification.autoattack_iterations": 5, "purification.square_queries": 20,
    # SOAP's purification runs a ResNet-18 on 4 rotations per step and budget: one step, and the
    # largest budget beside 0, keep the loops and the choice between budgets
    "purification.soap.train_subset": 64, "purification.soap.holdout": 16, "purification.soap.batch_size": 16,
    "purification.soap.epochs": 1, "purification.soap.budgets": [0.0, 20 / 255], "purification.soap.steps": 1,
    # a training step of NRP's 23 RRDBs of 64 channels (with SSP, VGG-16 and the critic) takes 11 s
    # per 16 CIFAR images on two CPU cores: two steps of 8 images, and one SSP step
    "purification.nrp.epochs": 1, "purification.nrp.steps": 1, "purification.nrp.batch_size": 8,
    "purification.nrp.images_per_epoch": 16,
    # WRN-34-10 takes about a second per forward+backward pass of 4 images on two CPU cores
    "adversarial_training.train_subset": 4, "adversarial_training.holdout": 2,
    "adversarial_training.batch_size": 2, "adversarial_training.epochs": 1,
    "adversarial_training.train_attack.steps": 2, "distillation.train_attack.steps": 2,
    "adversarial_training.mart.training.epochs": 1, "adversarial_training.fat.training.epochs": 1,
    "adversarial_training.gairat.training.epochs": 1, "adversarial_training.awp.training.epochs": 1,
    "adversarial_training.mail.training.epochs": 1, "adversarial_training.dynat_mail.training.epochs": 1,
    "adversarial_training.dynat_inner_gairat.training.epochs": 1,
    "adversarial_training.gairat_small_target.training.epochs": 1,
    "adversarial_training.dynat_inner_gairat_small_target.training.epochs": 1,
    "adversarial_training.evaluation.eval_subset": 2, "adversarial_training.evaluation.autoattack_subset": 2,
    "adversarial_training.evaluation.cw_steps": 5, "adversarial_training.evaluation.autoattack_iterations": 5,
    "adversarial_training.evaluation.square_queries": 20,
    "adversarial_training.table4_evaluation.pgd_steps": 3, "adversarial_training.table4_evaluation.apgd_iterations": 5,
    "distillation.train_subset": 4, "distillation.holdout": 2, "distillation.batch_size": 2,
    "distillation.epochs": 2,
    "distillation.evaluation.eval_subset": 2, "distillation.evaluation.autoattack_subset": 2,
    "distillation.evaluation.cw_steps": 5, "distillation.evaluation.cw_restarts": 2,
    "distillation.evaluation.autoattack_iterations": 5, "distillation.evaluation.square_queries": 20,
    "leaderboard.eval_subset": 2, "leaderboard.check_subset": 2, "leaderboard.check_steps": 2,
    "leaderboard.autoattack_iterations": 5, "leaderboard.square_queries": 20, "leaderboard.check_square_queries": 20,
}

# The paper's evaluation attacks (Koo et al. 2023, Sec. 4.1); the same in both profiles.
PURIFICATION_ATTACKS: dict[str, dict[str, Any]] = {
    "PGD8": {"name": "pgd", "eps": 8 / 255, "alpha": 2 / 255, "steps": 20},
    "PGD16": {"name": "pgd", "eps": 16 / 255, "alpha": 2 / 255, "steps": 20},
    "FGSM": {"name": "fgsm", "eps": 8 / 255},
    "BIM": {"name": "bim", "eps": 8 / 255, "alpha": 2 / 255, "steps": 20},
    "CW": {"name": "cw", "c": 1.0, "kappa": 0.0, "steps": 40, "lr": 0.01},
    "AA": {"name": "autoattack", "eps": 8 / 255, "version": "standard"},
}


def profile_config(profile: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A deep copy of ``profile``'s configuration with dotted-key overrides applied,
    e.g. ``{"classifier.epochs": 5}``."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known profiles: {', '.join(PROFILES)}")
    config = copy.deepcopy(PROFILES[profile])
    for dotted, value in (overrides or {}).items():
        *parents, leaf = dotted.split(".")
        node = config
        for key in parents:
            if not isinstance(node.get(key), dict):
                raise KeyError(f"override {dotted!r}: profile {profile!r} has no section {key!r}")
            node = node[key]
        if leaf not in node:
            raise KeyError(f"override {dotted!r}: profile {profile!r} has no setting {leaf!r} "
                           f"(settings there: {', '.join(node)})")
        node[leaf] = value
    return config


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else the CPU; anything else is passed to ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {str(device)!r} was asked for but this machine has no CUDA GPU; "
                           "use device='auto' or 'cpu'")
    return resolved


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (no loss scaling needed), nothing on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _channels_last_input(module: torch.nn.Module, args: tuple) -> tuple:
    if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
        return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
    return args


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move ``model`` to ``device`` in the channels-last memory layout, and give it its images in that
    layout too: convolutions run faster in it on CUDA and on the CPU alike (on two CPU cores, the
    small CNN's forward-backward pass took 20 ms per 128 Fashion-MNIST images instead of 31, its
    forward pass 8 instead of 16, and AutoAttack on chapter 6's TRADES model 11 s instead of 18).
    Only the layout changes, not the values or the parameter names.

    A model built on the ``meta`` device (shapes without storage) gets empty storage on ``device``,
    to be filled by ``load_state_dict``; every buffer must then be saved with the weights, or it
    would stay uninitialised."""
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        unsaved = [f"{name}.{buffer}" if name else buffer for name, module in model.named_modules()
                   for buffer in module._non_persistent_buffers_set]
        if unsaved:
            raise ValueError(f"buffers {', '.join(unsaved)} are not saved with the weights, so a model built "
                             "without initial weights would leave them empty; build it with its initial weights")
        model = model.to_empty(device=device)
    model = model.to(device).to(memory_format=torch.channels_last)
    model.register_forward_pre_hook(_channels_last_input)
    return model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Run:
    """What a notebook runs under: profile, dataset, device, seed and the resolved configuration;
    ``smoke`` marks the paper profile cut to CI size (:data:`PAPER_SMOKE_OVERRIDES`). With ``gpus``
    above 1 a missing trained model is trained by that many ``torchrun`` processes
    (:mod:`advlib.distributed`), with BatchNorm statistics per process unless ``sync_batchnorm``."""

    profile: str
    dataset: str
    device: torch.device
    seed: int
    config: dict[str, Any]
    smoke: bool = False
    gpus: int = 1
    sync_batchnorm: bool = False
    started: float = field(default_factory=time.time)

    @property
    def results_dir(self) -> Path:
        """``<home>/results/<profile>-<dataset>/`` (``<profile>-smoke-<dataset>`` for a smoke run, so
        that it never overwrites a real run's tables)."""
        return paths.results_dir(f"{self.profile}-smoke" if self.smoke else self.profile, self.dataset)

    def banner(self) -> str:
        import torchvision

        from . import __version__

        gpu = f" ({torch.cuda.get_device_name(self.device)})" if self.device.type == "cuda" else ""
        if self.gpus > 1:
            gpu += f" | trains on {self.gpus} {'GPUs' if self.device.type == 'cuda' else 'CPU processes'} (torchrun)"
        lines = [
            f"advlib {__version__} | profile {self.profile!r}: {self.config['description']}",
            f"dataset {self.dataset} | device {self.device}{gpu} | seed {self.seed}",
            f"python {platform.python_version()} | torch {torch.__version__} | torchvision {torchvision.__version__}"
            f" | started {time.strftime('%Y-%m-%d %H:%M:%S')}",
        ]
        if self.smoke:
            lines += ["SMOKE RUN: the paper profile with only these sizes cut (its numbers mean nothing):",
                      *smoke_override_lines()]
        return "\n".join(lines)

    def provenance(self) -> dict[str, Any]:
        """What produced a result: advlib's version and git commit (None outside a checkout), torch,
        the device, profile, dataset, seed, smoke flag, the hash of the resolved configuration, and
        the wall time since :func:`setup` in seconds."""
        from . import __version__
        from .cache import config_hash

        return {"advlib": __version__, "git_commit": paths.git_commit(), "torch": torch.__version__,
                "device": str(self.device), "profile": self.profile, "dataset": self.dataset, "seed": self.seed,
                "smoke": self.smoke, "config_hash": config_hash(self.config),
                "wall_seconds": round(time.time() - self.started, 1)}

    def save_results(self, name: str, table: Any) -> Path:
        """Write ``table`` (JSON-serialisable) to ``<results_dir>/<name>.json`` atomically, with its
        :meth:`provenance`."""
        from .cache import atomic_write_json

        path = self.results_dir / f"{name}.json"
        atomic_write_json({"profile": self.profile, "dataset": self.dataset, "seed": self.seed,
                           "provenance": self.provenance(), "results": table}, path)
        return path

    def finish(self) -> None:
        """Print the wall time since :func:`setup`; the last cell of every notebook calls it."""
        minutes, seconds = divmod(time.time() - self.started, 60)
        print(f"profile {self.profile!r} on {self.device}: {int(minutes)} min {seconds:.0f} s wall time")


def smoke_override_lines() -> list[str]:
    """:data:`PAPER_SMOKE_OVERRIDES`, one line per profile section: ``  section: key=value, ...``."""
    sections: dict[str, list[str]] = {}
    for dotted, value in PAPER_SMOKE_OVERRIDES.items():
        section, _, key = dotted.rpartition(".")
        sections.setdefault(section or "(top level)", []).append(f"{key}={value}")
    return [f"  {section}: {', '.join(items)}" for section, items in sections.items()]


def setup(profile: str = "quick", dataset: str | None = None, device: str = "auto", seed: int = 0,
          overrides: dict[str, Any] | None = None, quiet: bool = False, smoke: bool = False, gpus: int = 1,
          sync_batchnorm: bool = False) -> Run:
    """Resolve a notebook's parameters into a :class:`Run`, seed every RNG and print the banner.
    ``smoke=True`` (the paper profile only) applies :data:`PAPER_SMOKE_OVERRIDES` before
    ``overrides``; ``gpus=N`` trains what is not cached on N GPUs with ``torchrun``."""
    from .data import info

    if smoke and profile != "paper":
        raise ValueError(f"smoke=True cuts the paper profile to CI size; profile {profile!r} is already small")
    resolved = resolve_device(device)
    gpus = int(gpus)
    if gpus < 1:
        raise ValueError(f"gpus must be at least 1, not {gpus}")
    if resolved.type == "cuda" and gpus > torch.cuda.device_count():
        raise ValueError(f"gpus={gpus} but this machine has {torch.cuda.device_count()} GPU(s); "
                         "ask for at most that many")
    if sync_batchnorm and (gpus == 1 or resolved.type != "cuda"):
        raise ValueError("sync_batchnorm needs gpus > 1 on CUDA GPUs (PyTorch's SyncBatchNorm runs only there)")
    config = profile_config(profile, {**(PAPER_SMOKE_OVERRIDES if smoke else {}), **(overrides or {})})
    dataset_name = info(dataset or config["dataset"]).name
    config["dataset"] = dataset_name
    run = Run(profile, dataset_name, resolved, int(seed), config, bool(smoke), gpus, bool(sync_batchnorm))
    seed_everything(run.seed)
    if run.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if in_notebook():
        warnings.formatwarning = warning_without_path
    if not quiet:
        print(run.banner(), file=sys.stdout)
    return run


def warning_without_path(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                         line: str | None = None) -> str:
    """A warning as a notebook shows it: its category and message, not the file and line that raised
    it (on a rendered page that would be a path on the machine that built the book)."""
    return f"{category.__name__}: {message}\n"


def progress_enabled() -> bool:
    """Progress bars are for people: batch runs (``make book``) set ``ADVLIB_PROGRESS=0``, and of the
    ranks of a distributed run only rank 0 shows them."""
    import os

    from . import distributed

    return os.environ.get("ADVLIB_PROGRESS", "1") != "0" and distributed.is_main()


def iterate(iterable: Any, desc: str = "", total: int | None = None) -> Iterator:
    """``tqdm.auto`` around ``iterable`` when progress bars are enabled."""
    if not progress_enabled():
        return iter(iterable)
    from tqdm.auto import tqdm

    return iter(tqdm(iterable, desc=desc, total=total, leave=False))


def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, Colab, papermill), where rich output can be shown."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def show_log(summary: str, lines: list[str], title: str = "per-epoch log") -> None:
    """``summary`` as one line and ``lines`` as a collapsed block in a notebook (so that a rendered
    page shows one line per trained model); both printed in a terminal."""
    if not in_notebook():
        print("\n".join([*lines, summary]), flush=True)
        return
    import html

    from IPython.display import HTML, display

    body = html.escape("\n".join(lines))
    display(HTML(f"<div class='advlib-log'>{html.escape(summary)}<details><summary>{html.escape(title)} "
                 f"({len(lines)} lines)</summary><pre>{body}</pre></details></div>"))
