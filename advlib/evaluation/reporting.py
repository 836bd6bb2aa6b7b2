"""Results as readers see them: rows with 95 % confidence intervals, markdown tables that say how
many images each column used, paired tests between rows, and the sanity lines every results table
of chapters 6-8 is checked with."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from .statistics import mcnemar_exact, wilson_interval

# which count key gives the n of a column (every other column: "images")
COLUMN_COUNTS = {"AA": "aa_images", "transfer": "transfer_images", "PGD-100": "table4_images",
                 "APGD": "table4_images"}


def count_key(column: str) -> str:
    """The row key holding how many images ``column`` was measured on."""
    if column.endswith("(AA images)"):
        return "aa_images"
    if column.endswith("(Table 4 images)"):
        return "table4_images"
    return COLUMN_COUNTS.get(column, "images")


def fraction_with_interval(outcome: torch.Tensor) -> tuple[float, list[float]]:
    """The fraction of true entries of a per-image outcome (6 digits; nan on no images) and its 95 %
    Wilson interval."""
    n, k = len(outcome), int(outcome.sum())
    return (round(k / n, 6) if n else float("nan")), [round(bound, 6) for bound in wilson_interval(k, n)]


def outcome_row(outcomes: Mapping[str, torch.Tensor], label: str) -> dict[str, Any]:
    """A results row from per-image outcomes (bool tensors, e.g. from
    :func:`~advlib.evaluation.protocols.robustness_outcomes`): ``method`` and ``source`` first, then
    each column's fraction (6 digits; nan on no images), its 95 % Wilson interval ``<column>_ci95``
    and the number of images of each kind (``images``, ``aa_images``, ``transfer_images``,
    ``table4_images``)."""
    row: dict[str, Any] = {"method": label, "source": "this run"}
    for column, outcome in outcomes.items():
        row[column], row[f"{column}_ci95"] = fraction_with_interval(outcome)
        row[count_key(column)] = len(outcome)
    return row


def paired_tests(outcomes: Mapping[str, Mapping[str, torch.Tensor]], pairs: Sequence[tuple[str, str]],
                 columns: Sequence[str], level: float = 0.05) -> list[dict[str, Any]]:
    """For each pair of rows (keys of ``outcomes``, evaluated on the same images) and column, the
    exact McNemar test (:func:`~advlib.evaluation.statistics.mcnemar_exact`) of their per-image
    outcomes: both accuracies, their difference (first minus second), the p-value and whether it is
    below ``level``."""
    tests = []
    for first, second in pairs:
        for column in columns:
            a, b = outcomes[first][column], outcomes[second][column]
            p = mcnemar_exact(a, b)
            tests.append({"first": first, "second": second, "column": column, "n": len(a),
                          "first_accuracy": a.float().mean().item(), "second_accuracy": b.float().mean().item(),
                          "difference": (a.float().mean() - b.float().mean()).item(), "p": p,
                          "significant": p < level})
    return tests


def verdict(test: Mapping[str, Any]) -> str:
    """A test of :func:`paired_tests` in words: "significant (p = 0.012)", "not significant (p = 0.4)"."""
    p = "p < 0.001" if test["p"] < 0.001 else f"p = {test['p']:.2g}"
    return f"significant ({p})" if test["significant"] else f"not significant ({p})"


def significance_lines(tests: Sequence[Mapping[str, Any]]) -> list[str]:
    """One sentence per test of :func:`paired_tests`: the two accuracies, the difference and its
    :func:`verdict` on those images."""
    return [f"{test['first']} vs {test['second']}, {test['column']}: {percent(test['first_accuracy'])} % "
            f"vs {percent(test['second_accuracy'])} % ({100 * test['difference']:+.1f} points) on the "
            f"same {test['n']} images, {verdict(test)}" for test in tests]


def ordering_against_paper(rows: Sequence[Mapping[str, Any]], paper: Mapping[str, Mapping[str, float]],
                           column: str) -> dict[str, Any]:
    """Does our table order the methods by ``column`` as the paper's does? Every pair of methods in both
    (``rows``' "method" among ``paper``'s keys) is ``agree`` when both tables rank it the same way,
    ``disagree`` when they rank it opposite ways, and neither when either table has a tie. Only the
    order is compared, so our fractions and the paper's percentages need no common scale."""
    ours = {row["method"]: row[column] for row in rows if row["method"] in paper}
    names = list(ours)
    agree, disagree = [], []
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            sign = (ours[first] - ours[second]) * (paper[first][column] - paper[second][column])
            if sign > 0:
                agree.append((first, second))
            elif sign < 0:  # the paper's better method first
                disagree.append((first, second) if paper[first][column] > paper[second][column]
                                else (second, first))
    return {"column": column, "methods": len(names), "agree": agree, "disagree": disagree}


def ordering_line(comparison: Mapping[str, Any], tests: Sequence[Mapping[str, Any]] = ()) -> str:
    """One sentence for :func:`ordering_against_paper`: how many pairs are ordered as in the paper and
    which are reversed here (the paper's better one first). With ``tests`` (:func:`paired_tests` of
    the reversed pairs in this column) the reversals are split into those the paired test calls
    significant, named, and those within the noise of the test images, counted."""
    agree, disagree = len(comparison["agree"]), comparison["disagree"]
    line = f"{comparison['column']}: {agree} of {agree + len(disagree)} pairs of methods ordered as in the paper"
    if not disagree:
        return line
    if not tests:
        return line + "; reversed here (the paper's better one first): " + ", ".join(f"{a} / {b}" for a, b in disagree)
    significant = {(t["first"], t["second"]) for t in tests if t["column"] == comparison["column"] and t["significant"]}
    named = [f"{a} / {b}" for a, b in disagree if (a, b) in significant or (b, a) in significant]
    line += f"; {len(disagree)} reversed here, {len(named)} of them significantly"
    return line + (" (the paper's better one first): " + ", ".join(named) if named else "")


def format_eps(eps: float) -> str:
    """An L∞ budget as the papers write it: "8/255" when it is a whole number of grey levels, else "0.1"."""
    levels = 255 * eps
    return f"{round(levels)}/255" if abs(levels - round(levels)) < 1e-6 else f"{eps:g}"


def percent(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage for a table; "—" where there is no number (not measured, or no images)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{100 * value:.{digits}f}"


def column_count(rows: Sequence[Mapping[str, Any]], column: str) -> str:
    """How many images ``column`` was measured on (:func:`count_key`: AutoAttack and its PGD check on
    ``aa_images``, the transfer rate on ``transfer_images``, DYNAT's Table 4 columns on
    ``table4_images``, every other column on ``images``); "n varies" if the rows disagree."""
    key = count_key(column)
    counts = {row.get(key) for row in rows if row.get(key) is not None}
    if not counts:
        return ""
    return f"n = {counts.pop()}" if len(counts) == 1 else "n varies"


def with_interval(row: Mapping[str, Any], column: str) -> str:
    """A cell: the accuracy in % and, where the row has one, its 95 % interval: "45.3 ± 3.1" (half its
    width) when the interval is symmetric around the accuracy to within a tenth of that, else its
    bounds, "0.9 (0.5–1.7)". The rows keep the exact bounds (``<column>_ci95``)."""
    interval = row.get(f"{column}_ci95")
    if interval is None or row.get(column) is None or any(math.isnan(bound) for bound in interval):
        return percent(row.get(column))
    value, (low, high) = row[column], interval
    if abs((high - value) - (value - low)) <= 0.1 * (high - low) / 2:
        return f"{percent(value)} ± {100 * (high - low) / 2:.1f}"
    return f"{percent(value)} ({percent(low)}–{percent(high)})"


def results_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], label: str = "method") -> str:
    """A markdown table, one line per row (its ``method``), each column an accuracy in % with its
    95 % confidence interval where the row has one, its header saying how many test images it was
    measured on."""
    headers = [f"{column} ({count})" if (count := column_count(rows, column)) else column for column in columns]
    lines = ["| " + " | ".join([label, *headers]) + " |", "|" + " --- |" * (len(columns) + 1)]
    lines += [f"| {row['method']} | " + " | ".join(with_interval(row, column) for column in columns) + " |"
              for row in rows]
    return "\n".join(lines)


def autoattack_sanity_lines(rows: Sequence[Mapping[str, Any]], check: str = "PGD-20") -> list[str]:
    """One line per row: AutoAttack must not report more robustness than ``check`` on the same images
    (Croce & Hein 2020's ensemble includes a stronger PGD); "VIOLATED" flags an evaluation to
    distrust."""
    width = max((len(str(row["method"])) for row in rows), default=0) + 2
    lines = []
    for row in rows:
        aa, reference = row["AA"], row[f"{check} (AA images)"]
        verdict = "ok" if not aa > reference + 1e-9 else "VIOLATED"
        lines.append(f"{row['method']:<{width}}AA {percent(aa):>5} % <= {check} {percent(reference):>5} %"
                     f" on the same {row['aa_images']} images: {verdict}")
    return lines


def grid_table(table: Mapping[str, Mapping[str, Any]], columns: Sequence[str], row_label: str = "attack") -> str:
    """A markdown table of ``{row: {column: value}}`` (values in %, or text), one line per row."""
    def cell(value: Any) -> str:
        return f"{value:.1f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join([row_label, *columns]) + " |", "|" + " --- |" * (len(columns) + 1)]
    lines += [f"| {row} | " + " | ".join(cell(values.get(column, "—")) for column in columns) + " |"
              for row, values in table.items()]
    return "\n".join(lines)


def describe_evaluation(eval_attack: Mapping[str, float], evaluation: Mapping[str, Any], columns: Sequence[str]) -> str:
    """One sentence naming the evaluation attacks of a table with ``columns`` (e.g. DYNAT's "PGD-10",
    "PGD-20", "PGD-50", "CW", "AA") and their budgets, from a chapter's profile section
    (``eval_attack`` and ``evaluation``), for the line above the results table."""
    parts = [f"ε = {eval_attack['eps']:.4g}, step {eval_attack['alpha']:.4g}"]
    named = [column for column in columns if column not in ("clean", "CW", "AA")]
    if "CW" in columns:
        restarts = evaluation.get("cw_restarts", 1)
        named.append(f"CW-∞ {evaluation['cw_steps']} steps × {restarts} restart{'s' if restarts > 1 else ''}")
    if named:
        parts.append(", ".join(named))
    if "AA" in columns:
        aa_images = (f"the first {evaluation['autoattack_subset']}" if evaluation["autoattack_subset"] else "all")
        parts.append(f"AutoAttack (standard) with {evaluation['autoattack_iterations']} iterations per white-box "
                     f"attack, {evaluation['autoattack_targets']} target classes for APGD-T and FAB-T and "
                     f"{evaluation['square_queries']} Square queries, on {aa_images} evaluation images")
    return "; ".join(parts)
