"""Which rows chapter 11's leaderboard holds, and the AutoAttack budgets it builds from a profile."""
from __future__ import annotations

import importlib

import pytest
import torch

from advlib import cache, config, recipes
from advlib.evaluation.protocols import autoattack_standard

# the package exports a function of the same name
leaderboard = importlib.import_module("advlib.recipes.leaderboard")


@pytest.mark.parametrize("profile", ["quick", "paper"])
def test_purifiers_face_every_threat_model_at_their_own_eps_only(profile):
    run = config.setup(profile, device="cpu", quiet=True)
    purifier_eps = run.config["purification"]["train_attack"]["eps"]
    defences = recipes.defences(run)
    purifiers = {recipes.PURIFIER, recipes.PURIFIER_TEACHER, recipes.SOAP, recipes.NRP}
    assert set(recipes.PURIFIERS) == purifiers
    compared = run.config["leaderboard"]["compared_at_purifier_eps"]
    for eps in run.config["leaderboard"]["epsilons"]:
        pairs = recipes.leaderboard_rows(run, eps)
        others = set(defences) - purifiers
        if eps == purifier_eps and compared is not None:
            others = {leaderboard.UNDEFENDED, *compared}
        assert {name for name, _ in pairs} - purifiers == others
        assert all(threat == "white-box" for name, threat in pairs if name not in purifiers)
        student = {(name, threat) for name in (recipes.PURIFIER, recipes.NRP) for threat in recipes.THREATS}
        # the AT teacher and SOAP: no BPDA row (for SOAP autograd already is BPDA)
        others = {(name, threat) for name in (recipes.PURIFIER_TEACHER, recipes.SOAP)
                  for threat in ("white-box", "gray-box", "transfer")}
        expected = student | others if eps == purifier_eps else set()
        assert {pair for pair in pairs if pair[0] in purifiers} == expected
    assert purifier_eps in run.config["leaderboard"]["epsilons"]


def test_every_purified_defence_is_keyed_by_its_classifier_too():
    """f∘P is scored, so a purifier's cached attacks must change when f does."""
    run = config.setup("quick", device="cpu", quiet=True)
    other = config.setup("quick", device="cpu", quiet=True, overrides={"classifier.epochs": 2})
    for name in recipes.PURIFIERS:
        assert recipes.defences(run)[name].config != recipes.defences(other)[name].config, name


def test_soap_and_nrp_can_be_trained_by_torchrun():
    from advlib.train import RECIPES
    assert RECIPES["soap"] is recipes.soap_network
    assert RECIPES["nrp"] is recipes.nrp_purifier


def test_the_defences_compared_at_the_purifiers_eps_must_exist():
    run = config.setup("quick", device="cpu", quiet=True,
                       overrides={"leaderboard.compared_at_purifier_eps": ["TRADES", "no such defence"]})
    with pytest.raises(ValueError, match="no such defence"):
        recipes.leaderboard_rows(run, 8 / 255)


def test_autoattack_budgets_come_from_the_section():
    section = {"autoattack_iterations": 7, "square_queries": 11, "autoattack_targets": 2}
    attack = autoattack_standard(0.1, section, seed=3)
    ensemble = attack.attacks()
    assert ensemble["apgd-ce"].n_iter == 7 and ensemble["fab-t"].n_iter == 7
    assert ensemble["apgd-t"].n_target_classes == 2 and ensemble["fab-t"].n_target_classes == 2
    assert ensemble["square"].n_queries == 11


def test_budgets_print_as_the_papers_write_them():
    from advlib.evaluation.reporting import format_eps
    assert format_eps(8 / 255) == "8/255" and format_eps(2 / 255) == "2/255"
    assert format_eps(0.1) == "0.1" and format_eps(0.5) == "0.5"


@pytest.fixture
def asked(monkeypatch) -> set:
    """The cache files the code under test looks up (nothing is computed or loaded)."""
    paths = set()

    def record(kind, key, compute, root=None, verbose=True):
        paths.add(cache.artifact_path(kind, key, root))
        return {"x_adv": torch.zeros(1)}

    monkeypatch.setattr(cache, "load_or_compute", record)
    return paths


def test_precompute_caches_what_the_chapter_asks_for(asked):
    """Every AutoAttack run of the leaderboard's rows and every checklist is one job of
    ``evaluation_jobs``, and each job is looked up under the key the chapter's cells will load."""
    run = config.setup("quick", device="cpu", quiet=True)
    for eps in run.config["leaderboard"]["epsilons"]:
        for name, threat in recipes.leaderboard_rows(run, eps):
            source, bpda = leaderboard.attack_source(name, threat)
            leaderboard.adversarial_examples(run, source, eps, bpda)
    for name in recipes.defences(run):
        leaderboard.checklist_attacks(run, name)
    jobs = leaderboard.evaluation_jobs(run)
    assert len(jobs) == len(set(jobs))
    assert {leaderboard.job_path(run, job) for job in jobs} == asked


def test_chapter_9_precomputes_exactly_the_purifiers_threat_models(asked):
    """Chapter 10 computes the AutoAttack runs behind the purifier's four threat-model rows and
    nothing else (the other rows and the checklists are chapter 11's): the same files that
    ``outcomes`` loads for the purifier."""
    run = config.setup("quick", device="cpu", quiet=True)
    purifier_eps = run.config["purification"]["train_attack"]["eps"]
    for threat in leaderboard.threats_of(recipes.PURIFIER):
        source, bpda = leaderboard.attack_source(recipes.PURIFIER, threat)
        leaderboard.adversarial_examples(run, source, purifier_eps, bpda)
    jobs = leaderboard.evaluation_jobs(run, [recipes.PURIFIER], checklists=False)
    assert len(asked) == len(recipes.THREATS) == len(jobs)
    assert {leaderboard.job_path(run, job) for job in jobs} == asked
    with_checklist = leaderboard.evaluation_jobs(run, [recipes.PURIFIER])
    assert with_checklist == jobs + [("checklist", recipes.PURIFIER)]
    with pytest.raises(ValueError, match="unknown defence.*'purifer'"):
        leaderboard.evaluation_jobs(run, ["purifer"])


def test_chapters_6_to_8_run_autoattack_on_the_leaderboards_images():
    """The evaluation images (500) with AutoAttack on the first 150 are the leaderboard's 150: the same
    images (nested samples) under the same cache key, so chapter 11 loads what chapters 6-9 computed."""
    from advlib.recipes.common import autoattack_key
    run = config.setup("quick", device="cpu", quiet=True)
    chapter = run.config["adversarial_training"]["evaluation"]
    board = run.config["leaderboard"]
    assert chapter["eval_subset"] > board["eval_subset"] and chapter["autoattack_subset"] == board["eval_subset"]
    x_board, _ = recipes.test_set(run, board["eval_subset"])
    x_chapter, _ = recipes.test_set(run, chapter["eval_subset"])
    assert torch.equal(x_chapter[:len(x_board)], x_board)
    model = {"arch": "any"}
    assert autoattack_key(run, model, 0.1, chapter) == autoattack_key(run, model, 0.1, board)
    everything = {**chapter, "eval_subset": None, "autoattack_subset": 200}  # the first 200 in file order
    assert autoattack_key(run, model, 0.1, everything) != autoattack_key(run, model, 0.1, board)
