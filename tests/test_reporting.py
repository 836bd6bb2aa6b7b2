"""Results rows, tables and paired tests as readers see them, worked by hand on a few images."""
from __future__ import annotations

import math

import pytest
import torch

from advlib.evaluation import reporting

# clean 3 of 4, PGD-20 1 of 4, AutoAttack 0 of 2 (its images), the transfer rate 1 of 3
OUTCOMES = {"clean": torch.tensor([1, 1, 0, 1]).bool(), "PGD-20": torch.tensor([1, 0, 0, 0]).bool(),
            "AA": torch.tensor([0, 0]).bool(), "PGD-20 (AA images)": torch.tensor([1, 0]).bool(),
            "transfer": torch.tensor([1, 0, 0]).bool()}


def test_outcome_row_counts_each_column_on_its_own_images():
    row = reporting.outcome_row(OUTCOMES, "ARD")
    assert (row["method"], row["source"]) == ("ARD", "this run")
    assert row["clean"] == 0.75 and row["PGD-20"] == 0.25 and row["AA"] == 0.0
    assert row["transfer"] == pytest.approx(1 / 3, abs=1e-6)
    assert (row["images"], row["aa_images"], row["transfer_images"]) == (4, 2, 3)
    # Wilson, 3 of 4, z = 1.96: centre (0.75 + 0.4802)/1.9604 = 0.6275, half 1.96·0.32695/1.9604 = 0.3269
    low, high = row["clean_ci95"]
    assert low == pytest.approx(0.3006, abs=1e-3) and high == pytest.approx(0.9544, abs=1e-3)
    assert row["AA_ci95"][0] == 0.0 and 0 < row["AA_ci95"][1] < 1


def test_table_cells_carry_the_interval_and_headers_the_count():
    table = reporting.results_table([reporting.outcome_row(OUTCOMES, "ARD")], ["clean", "AA", "transfer"])
    header, _, line = table.splitlines()
    assert header == "| method | clean (n = 4) | AA (n = 2) | transfer (n = 3) |"
    assert line.startswith("| ARD | 75.0 (30.1–95.4) | 0.0 (0.0–")  # far from symmetric: the bounds
    half = {"method": "m", "clean": 0.5, "clean_ci95": [0.469, 0.531]}  # Wilson for 500 of 1000
    assert reporting.results_table([half], ["clean"]).splitlines()[-1] == "| m | 50.0 ± 3.1 |"
    quoted = {"method": "PGD-AT (paper)", "clean": 0.8}  # a paper's number has no interval
    assert reporting.results_table([quoted], ["clean"]).splitlines()[-1] == "| PGD-AT (paper) | 80.0 |"


def test_paired_tests_by_hand():
    # 2 discordant images, both where only "a" is right: p = 2·C(2,0)/2^2 = 0.5
    outcomes = {"a": {"PGD-20": torch.tensor([1, 1, 1, 0]).bool()}, "b": {"PGD-20": torch.tensor([0, 0, 1, 0]).bool()}}
    (test,) = reporting.paired_tests(outcomes, [("a", "b")], ["PGD-20"])
    assert test["p"] == pytest.approx(0.5) and not test["significant"]
    assert test["difference"] == pytest.approx(0.5) and test["n"] == 4
    # 10 discordant images, all favouring "a": p = 2/2^10 < 0.05
    many = {"a": {"clean": torch.ones(12).bool()}, "b": {"clean": torch.tensor([0] * 10 + [1, 1]).bool()}}
    (test,) = reporting.paired_tests(many, [("a", "b")], ["clean"])
    assert test["p"] == pytest.approx(2 / 1024) and test["significant"]
    assert reporting.verdict({"p": 0.0004, "significant": True}) == "significant (p < 0.001)"
    (line,) = reporting.significance_lines([test])
    assert line == "a vs b, clean: 100.0 % vs 16.7 % (+83.3 points) on the same 12 images, significant (p = 0.002)"


def test_a_column_measured_on_no_images_has_no_number():
    row = reporting.outcome_row({"transfer": torch.zeros(0).bool()}, "Standard")
    assert math.isnan(row["transfer"]) and row["transfer_images"] == 0
    assert reporting.with_interval(row, "transfer") == "—"


def test_scatter_draws_each_rows_interval_as_its_error_bar():
    import matplotlib
    matplotlib.use("Agg")
    from advlib import plots
    row = reporting.outcome_row(OUTCOMES, "ARD")
    quoted = {"method": "paper", "clean": 0.8, "PGD-20": 0.5}  # no interval: a plain point
    fig = plots.rows_scatter([row, quoted], "clean", "PGD-20", "clean (%)", "PGD-20 (%)")
    with_bars, plain = fig.axes[0].containers
    (x_segments, y_segments) = [c.get_segments() for c in with_bars[2]]
    low, high = row["clean_ci95"]
    assert x_segments[0][0][0] == pytest.approx(100 * low) and x_segments[0][1][0] == pytest.approx(100 * high)
    low, high = row["PGD-20_ci95"]
    assert y_segments[0][0][1] == pytest.approx(100 * low) and y_segments[0][1][1] == pytest.approx(100 * high)
    assert not plain.has_xerr and not plain.has_yerr
    matplotlib.pyplot.close(fig)


def test_rows_keep_six_digits():
    row = reporting.outcome_row({"transfer": torch.tensor([1, 0, 0]).bool()}, "ARD")
    assert row["transfer"] == 0.333333 and all(len(str(bound).split(".")[1]) <= 6 for bound in row["transfer_ci95"])


def test_each_column_counts_its_own_images():
    assert reporting.count_key("PGD-20 (AA images)") == "aa_images" and reporting.count_key("AA") == "aa_images"
    assert reporting.count_key("transfer") == "transfer_images" and reporting.count_key("CW") == "images"
    assert [reporting.count_key(c) for c in ("PGD-100", "APGD", "clean (Table 4 images)", "PGD-50")] == [
        "table4_images", "table4_images", "table4_images", "images"]
    rows = [{"method": "a", "clean": 0.5, "images": 10}, {"method": "b", "clean": 0.5, "images": 12}]
    header, rule, *_ = reporting.results_table(rows, ["clean", "FGSM"]).splitlines()
    assert header == "| method | clean (n varies) | FGSM (n varies) |"
    assert rule == "| --- | --- | --- |"
    bare = reporting.results_table([{"method": "paper", "clean": 0.8}], ["clean"]).splitlines()[0]
    assert bare == "| method | clean |", "no count, no parentheses"


def test_a_cell_shows_plus_minus_only_for_a_symmetric_interval():
    def cell(value, low, high):
        return reporting.with_interval({"x": value, "x_ci95": [low, high]}, "x")
    assert cell(0.5, 0.4, 0.6) == "50.0 ± 10.0"
    assert cell(0.5, 0.4, 0.609) == "50.0 ± 10.4", "0.9 points lopsided, within a tenth of the half-width"
    assert cell(0.5, 0.4, 0.62) == "50.0 (40.0–62.0)", "2 points lopsided: more than a tenth of 11"


def test_verdicts_at_their_thresholds():
    assert reporting.verdict({"p": 0.001, "significant": True}) == "significant (p = 0.001)"
    assert reporting.verdict({"p": 0.4, "significant": False}) == "not significant (p = 0.4)"
    outcomes = {"a": {"c": torch.tensor([1, 1, 0]).bool()}, "b": {"c": torch.tensor([0, 0, 0]).bool()}}
    (test,) = reporting.paired_tests(outcomes, [("a", "b")], ["c"], level=0.5)  # p = 2·C(2,0)/2^2 = 0.5
    assert test["p"] == pytest.approx(0.5) and not test["significant"], "significant means p below the level"


def test_autoattack_sanity_lines_flag_more_robustness_than_pgd():
    rows = [{"method": "ok-row", "AA": 0.40, "PGD-20 (AA images)": 0.45, "aa_images": 200},
            {"method": "bad", "AA": 0.46, "PGD-20 (AA images)": 0.45, "aa_images": 200},
            {"method": "tie", "AA": 0.45 + 1e-12, "PGD-20 (AA images)": 0.45, "aa_images": 200}]
    assert reporting.autoattack_sanity_lines(rows) == [
        "ok-row  AA  40.0 % <= PGD-20  45.0 % on the same 200 images: ok",
        "bad     AA  46.0 % <= PGD-20  45.0 % on the same 200 images: VIOLATED",
        "tie     AA  45.0 % <= PGD-20  45.0 % on the same 200 images: ok"]
    at_tolerance = [{"method": "m", "AA": 0.45 + 1e-9, "PGD-20 (AA images)": 0.45, "aa_images": 2}]
    assert reporting.autoattack_sanity_lines(at_tolerance)[0].endswith(": ok"), "1e-9 of float noise is not more"
    assert reporting.autoattack_sanity_lines([]) == []
    cw = [{"method": "m", "AA": 0.3, "CW (AA images)": 0.2, "aa_images": 8}]
    assert reporting.autoattack_sanity_lines(cw, check="CW") == ["m  AA  30.0 % <= CW  20.0 % on the same 8 images: VIOLATED"]


def test_grid_table_by_hand():
    table = {"PGD8": {"ours": 45.26, "images": 100}, "FGSM": {"ours": "n/a"}}
    assert reporting.grid_table(table, ["ours", "images"]).splitlines() == [
        "| attack | ours | images |", "| --- | --- | --- |", "| PGD8 | 45.3 | 100 |", "| FGSM | n/a | — |"]
    assert reporting.grid_table({}, ["x"], row_label="row").splitlines()[0] == "| row | x |"


def test_the_evaluation_sentence_names_every_budget_and_the_table_s_attacks():
    evaluation = {"cw_steps": 20, "cw_restarts": 1, "autoattack_iterations": 25, "autoattack_targets": 3,
                  "square_queries": 300, "autoattack_subset": 200}
    dynat = ("clean", "PGD-10", "PGD-20", "PGD-50", "CW", "AA")
    assert reporting.describe_evaluation({"eps": 0.1, "alpha": 0.025}, evaluation, dynat) == (
        "ε = 0.1, step 0.025; PGD-10, PGD-20, PGD-50, CW-∞ 20 steps × 1 restart; AutoAttack (standard) with 25 "
        "iterations per white-box attack, 3 target classes for APGD-T and FAB-T and 300 Square queries, on the "
        "first 200 evaluation images")
    saad = ("clean", "FGSM", "PGD-20", "CW", "AA")
    paper = {**evaluation, "cw_restarts": 10, "autoattack_subset": None}
    sentence = reporting.describe_evaluation({"eps": 8 / 255, "alpha": 2 / 255}, paper, saad)
    assert sentence.startswith("ε = 0.03137, step 0.007843; FGSM, PGD-20, CW-∞ 20 steps × 10 restarts;")
    assert sentence.endswith("on all evaluation images")
    two = reporting.describe_evaluation({"eps": 0.1, "alpha": 0.025}, {**evaluation, "cw_restarts": 2}, saad)
    assert "CW-∞ 20 steps × 2 restarts;" in two
    unsaid = {key: value for key, value in evaluation.items() if key != "cw_restarts"}
    assert "CW-∞ 20 steps × 1 restart;" in reporting.describe_evaluation({"eps": 0.1, "alpha": 0.025}, unsaid, saad)
    assert reporting.describe_evaluation({"eps": 0.1, "alpha": 0.025}, {}, ("clean", "PGD-20")) == (
        "ε = 0.1, step 0.025; PGD-20")


def test_ordering_against_the_papers_table_by_hand():
    """Three methods in both tables (D is ours only): A > B > C in the paper; ours has A > C > B on
    clean (pair B/C reversed) and A = B on AA (a tie counts neither way)."""
    ours = [{"method": "A", "clean": 0.9, "AA": 0.5}, {"method": "B", "clean": 0.7, "AA": 0.5},
            {"method": "C", "clean": 0.8, "AA": 0.1}, {"method": "D", "clean": 1.0, "AA": 1.0}]
    paper = {"A": {"clean": 90.0, "AA": 50.0}, "B": {"clean": 85.0, "AA": 45.0}, "C": {"clean": 80.0, "AA": 40.0}}
    clean = reporting.ordering_against_paper(ours, paper, "clean")
    assert clean == {"column": "clean", "methods": 3, "agree": [("A", "B"), ("A", "C")], "disagree": [("B", "C")]}
    assert reporting.ordering_line(clean) == ("clean: 2 of 3 pairs of methods ordered as in the paper; reversed "
                                              "here (the paper's better one first): B / C")
    aa = reporting.ordering_against_paper(ours, paper, "AA")
    assert aa["agree"] == [("A", "C"), ("B", "C")] and aa["disagree"] == []
    assert reporting.ordering_line(aa) == "AA: 2 of 2 pairs of methods ordered as in the paper"
    reversed_order = reporting.ordering_against_paper(ours[::-1], paper, "clean")
    assert reversed_order["disagree"] == [("B", "C")], "the paper's better one first, whatever our row order"
    significant = [{"first": "C", "second": "B", "column": "clean", "significant": True}]
    assert reporting.ordering_line(clean, significant) == ("clean: 2 of 3 pairs of methods ordered as in the paper; "
                                                           "1 reversed here, 1 of them significantly (the paper's "
                                                           "better one first): B / C")
    within_noise = [{**significant[0], "significant": False}, {**significant[0], "column": "AA"}]
    assert reporting.ordering_line(clean, within_noise) == ("clean: 2 of 3 pairs of methods ordered as in the "
                                                            "paper; 1 reversed here, 0 of them significantly")


def test_ordering_against_the_paper_with_a_tie_in_the_paper_and_two_reversals():
    ours = [{"method": "A", "clean": 0.1}, {"method": "B", "clean": 0.2}, {"method": "C", "clean": 0.3}]
    paper = {"A": {"clean": 90.0}, "B": {"clean": 80.0}, "C": {"clean": 80.0}}
    comparison = reporting.ordering_against_paper(ours, paper, "clean")
    assert comparison["agree"] == [] and comparison["disagree"] == [("A", "B"), ("A", "C")], "B = C in the paper"
    assert reporting.ordering_line(comparison).endswith("(the paper's better one first): A / B, A / C")
    tests = [{"first": a, "second": b, "column": "clean", "significant": True} for a, b in comparison["disagree"]]
    assert reporting.ordering_line(comparison, tests).endswith("2 of them significantly (the paper's better one "
                                                               "first): A / B, A / C")
