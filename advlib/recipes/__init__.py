"""The book's trained artifacts, each "load if present, else train" under its configuration hash.

A notebook asks for what it needs (``recipes.classifier(run)``); whichever notebook runs first
trains it, every later one loads it, and each notebook still runs on its own. One module per part
of the book, all re-exported here.
"""
from __future__ import annotations

from .common import NETWORK_ROLES, Method, held_out_robustness, network, test_set, training_data  # noqa: F401
from .classifier import classifier, classifier_config  # noqa: F401
from .purification import (ABLATION, TABLE1_BASELINES, adversarial_pairs, gray_box_tables,  # noqa: F401
                           nrp_config, nrp_feature_extractor, nrp_features_config, nrp_purifier, purifier_config, purifier_student, purifier_student_loss, purifier_teacher, soap_config,
                           soap_network, soap_purifier, soap_purifier_config)
from .adversarial_training import (AT_COLUMNS, AT_METHODS, REWEIGHTING_METHODS, REWEIGHTING_ROWS,  # noqa: F401
                                   REWEIGHTING_TABLES,
                                   adversarial_training_config, adversarially_trained, at_evaluation, at_outcomes,
                                   at_table, chapter_of, reweighting_outcomes, reweighting_table, save_at_dynat,
                                   table4_columns, table4_outcomes)
from .distillation import (DISTILLATION_COLUMNS, DISTILLATION_METHODS, DISTILLED, TEACHER_LABEL,  # noqa: F401
                           distillation_config, distillation_evaluation, distillation_outcomes, distillation_table,
                           distillation_teacher, distillation_teacher_config, distillation_trainer,
                           distilled_student, robustbench_model, saad_weights, seed_spread, teacher_passes)
from .leaderboard import (NRP, PURIFIER, PURIFIER_TEACHER, PURIFIERS, SOAP, THREATS, Defence, checklist,  # noqa: F401
                          defences, leaderboard, leaderboard_rows, outcomes, precompute)
