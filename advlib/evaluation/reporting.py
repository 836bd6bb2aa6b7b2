"""Results as readers see them: rows, markdown tables that say how many images each column used,
and the sanity lines every results table of chapters 6-8 is checked with."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

COUNT_KEYS = ("images", "aa_images")


def stored_row(stored: Mapping[str, torch.Tensor | float], label: str) -> dict[str, Any]:
    """A results row from cached tensors: ``method`` and ``source`` first, counts as ints,
    accuracies as floats rounded to 6 digits."""
    row: dict[str, Any] = {"method": label, "source": "this run"}
    for key, value in stored.items():
        row[key] = int(value) if key in COUNT_KEYS else round(float(value), 6)
    return row


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
    """How many images ``column`` was measured on: AutoAttack and its PGD check on ``aa_images``,
    every other column on ``images``; "n varies" if the rows disagree."""
    key = "aa_images" if column == "AA" or column.endswith("(AA images)") else "images"
    counts = {row.get(key) for row in rows if row.get(key) is not None}
    if not counts:
        return ""
    return f"n = {counts.pop()}" if len(counts) == 1 else "n varies"


def results_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], label: str = "method") -> str:
    """A markdown table, one line per row (its ``method``), each column an accuracy in %, its header
    saying how many test images it was measured on."""
    headers = [f"{column} ({count})" if (count := column_count(rows, column)) else column for column in columns]
    lines = ["| " + " | ".join([label, *headers]) + " |", "|" + " --- |" * (len(columns) + 1)]
    lines += [f"| {row['method']} | " + " | ".join(percent(row.get(column)) for column in columns) + " |"
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


def describe_evaluation(eval_attack: Mapping[str, float], evaluation: Mapping[str, Any]) -> str:
    """One sentence naming a chapter's evaluation attacks and their budgets, from its profile
    section (``eval_attack`` and ``evaluation``), for the line above a results table."""
    restarts = evaluation.get("cw_restarts", 1)
    aa_images = evaluation["autoattack_subset"] or "all"
    return (f"ε = {eval_attack['eps']:.4g}, step {eval_attack['alpha']:.4g}; FGSM, PGD-20, CW-∞ {evaluation['cw_steps']} "
            f"steps × {restarts} restart{'s' if restarts > 1 else ''}; AutoAttack (standard) with "
            f"{evaluation['autoattack_iterations']} iterations per white-box attack, {evaluation['autoattack_targets']} "
            f"target classes for APGD-T and FAB-T and {evaluation['square_queries']} Square queries, on the first "
            f"{aa_images} evaluation images")
