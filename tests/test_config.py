"""advlib.config: profiles, overrides, devices, the banner."""
from __future__ import annotations

import pytest
import torch

import advlib
from advlib import config


def test_profiles_differ_where_the_issue_says():
    quick, paper = config.profile_config("quick"), config.profile_config("paper")
    assert quick["dataset"] == "fashion-mnist" and paper["dataset"] == "cifar10"
    assert paper["classifier"]["arch"] == "resnet56"


def test_overrides_apply_and_do_not_leak():
    original = config.PROFILES["quick"]["classifier"]["epochs"]
    changed = config.profile_config("quick", {"classifier.epochs": original + 1})
    assert changed["classifier"]["epochs"] == original + 1
    assert config.PROFILES["quick"]["classifier"]["epochs"] == original


def test_bad_overrides_and_profiles_name_the_problem():
    with pytest.raises(KeyError, match="no setting 'epoch'"):
        config.profile_config("quick", {"classifier.epoch": 1})
    with pytest.raises(KeyError, match="no section 'classifer'"):
        config.profile_config("quick", {"classifer.epochs": 1})
    with pytest.raises(ValueError, match="known profiles: quick, paper"):
        config.profile_config("fast")


def test_device_resolution():
    assert config.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert config.resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            config.resolve_device("cuda")


def test_setup_prints_profile_dataset_device_and_versions(capsys):
    run = advlib.setup("quick", dataset="cifar10", device="cpu", seed=3)
    banner = capsys.readouterr().out
    assert "profile 'quick'" in banner and "dataset cifar10" in banner and "device cpu" in banner
    assert f"torch {torch.__version__}" in banner
    assert run.results_dir.name == "quick-cifar10" and run.seed == 3
    run.finish()
    assert "wall time" in capsys.readouterr().out


def test_notebook_warnings_show_no_path_of_the_building_machine():
    text = config.warning_without_path(UserWarning("Square beats the white-box attacks"), UserWarning,
                                       "/home/builder/advlib/attacks/base.py", 35)
    assert text == "UserWarning: Square beats the white-box attacks\n"
