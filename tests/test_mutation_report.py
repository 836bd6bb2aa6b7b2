"""The mutation report's arithmetic (tests/mutation_report.py), on verdicts made up by hand."""
from __future__ import annotations

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("mutation_report", Path(__file__).parent / "mutation_report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def diff(removed: str, added: str) -> str:
    return f"--- a.py\n+++ a.py\n@@ -1,2 +1,2 @@\n def f(x):\n-    {removed}\n+    {added}"


def test_score_counts_timeouts_and_killed_processes_as_caught_and_leaves_unchecked_mutants_out():
    status = {"a.f__mutmut_1": "killed", "a.f__mutmut_2": "timeout", "a.f__mutmut_3": "survived",
              "a.f__mutmut_4": "segfault",
              "a.g__mutmut_1": "not checked", "a.g__mutmut_2": "skipped", "a.g__mutmut_3": "no tests"}
    notes = {"a.f__mutmut_3": {"change": "return x * 1", "why": "equivalent: ..."}}
    diffs = {"a.f__mutmut_3": diff("return x", "return x * 1"), "a.g__mutmut_3": diff("return 1", "return 2")}
    judged, score, survivors, unexplained, unused = report.summarize(status, notes, diffs)
    # judged: killed, timeout, survived, segfault, no tests -> 3 caught of 5
    assert sorted(judged) == ["a.f__mutmut_1", "a.f__mutmut_2", "a.f__mutmut_3", "a.f__mutmut_4", "a.g__mutmut_3"]
    assert score == 60.0
    assert survivors == ["a.f__mutmut_3", "a.g__mutmut_3"]
    assert unexplained == ["a.g__mutmut_3"] and unused == []


def test_a_note_explains_only_the_mutation_it_was_written_for():
    """After its function changed, the name a note is filed under can stand for another mutation:
    that survivor is unexplained. Notes whose mutant was caught or is gone are reported as unused;
    a note whose mutant was not checked in this run is neither."""
    status = {"a.f__mutmut_1": "survived", "a.f__mutmut_2": "killed", "a.f__mutmut_3": "not checked"}
    notes = {name: {"change": "return x * 1", "why": "equivalent"} for name in
             ("a.f__mutmut_1", "a.f__mutmut_2", "a.f__mutmut_3", "a.f__mutmut_9")}
    diffs = {"a.f__mutmut_1": diff("return x", "return x + 1")}
    _, _, survivors, unexplained, unused = report.summarize(status, notes, diffs)
    assert survivors == unexplained == ["a.f__mutmut_1"]
    assert unused == ["a.f__mutmut_2", "a.f__mutmut_9"]
    assert report.added_lines(diff("a = 1", "a = 2")) == ["a = 2"]
    assert report.explains({"change": "  a = 2 "}, diff("a = 1", "a = 2"))
    assert not report.explains({"change": "a = 1"}, diff("a = 1", "a = 2"))  # the removed line is not the change


def test_module_of_a_mutant():
    assert report.module_of("advlib.attacks.apgd.x_checkpoints__mutmut_3") == "advlib.attacks.apgd"
    assert report.module_of("advlib.attacks.fgsm.xǁFGSMǁ__init____mutmut_1") == "advlib.attacks.fgsm"
