"""The mutation report's arithmetic (tests/mutation_report.py), on verdicts made up by hand."""
from __future__ import annotations

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("mutation_report", Path(__file__).parent / "mutation_report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def test_score_counts_timeouts_and_killed_processes_as_caught_and_leaves_unchecked_mutants_out():
    status = {"a.f__mutmut_1": "killed", "a.f__mutmut_2": "timeout", "a.f__mutmut_3": "survived",
              "a.f__mutmut_4": "segfault",
              "a.g__mutmut_1": "not checked", "a.g__mutmut_2": "skipped", "a.g__mutmut_3": "no tests"}
    judged, score, survivors, unexplained = report.summarize(status, {"a.f__mutmut_3": "equivalent: ..."})
    # judged: killed, timeout, survived, segfault, no tests -> 3 caught of 5
    assert sorted(judged) == ["a.f__mutmut_1", "a.f__mutmut_2", "a.f__mutmut_3", "a.f__mutmut_4", "a.g__mutmut_3"]
    assert score == 60.0
    assert survivors == ["a.f__mutmut_3", "a.g__mutmut_3"]
    assert unexplained == ["a.g__mutmut_3"]


def test_module_of_a_mutant():
    assert report.module_of("advlib.attacks.apgd.x_checkpoints__mutmut_3") == "advlib.attacks.apgd"
    assert report.module_of("advlib.attacks.fgsm.xǁFGSMǁ__init____mutmut_1") == "advlib.attacks.fgsm"
