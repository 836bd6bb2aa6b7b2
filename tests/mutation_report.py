"""The report of `make mutation`: mutmut's verdict on every mutant of the configured modules
(pyproject's ``[tool.mutmut]``), the mutation score per module, and each surviving mutant with its
diff and the explanation in ``tests/mutation_notes.yml`` (an equivalent mutant, or why no test can
tell it apart). Written to ``_build/mutation/report.md``; exits with 1 when the score is below
:data:`REQUIRED_SCORE` or a survivor has no explanation.

mutmut numbers the mutants of a function in order, so once the function changes a name can stand for
another mutation. Each note therefore records the line its mutant adds (``change``) beside the reason
(``why``), and explains a survivor only while that survivor's diff still adds that line.

    python tests/mutation_report.py      (after `mutmut run`, from the repository root)
"""
from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTES = ROOT / "tests" / "mutation_notes.yml"
REPORT = ROOT / "_build" / "mutation" / "report.md"
REQUIRED_SCORE = 90.0
# killed: a test failed; timeout: the mutant made a test hang (an endless loop); segfault: the test
# process was killed by a signal (an endless loop that filled memory, or the CPU-time limit's SIGKILL).
# Each of the last two stops the tests from passing, so it counts as caught.
CAUGHT = {"killed", "timeout", "segfault"}
NOT_JUDGED = {"skipped", "not checked"}


def mutmut(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout


def verdicts() -> dict[str, str]:
    """mutant name -> mutmut's status, for every mutant."""
    result = {}
    for line in mutmut("results", "--all", "true").splitlines():
        name, _, status = line.strip().partition(": ")
        if status:
            result[name] = status
    return result


def module_of(mutant: str) -> str:
    """``advlib.attacks.apgd.x_checkpoints__mutmut_3`` -> ``advlib.attacks.apgd``."""
    return mutant.split("__mutmut_")[0].rsplit(".", 1)[0]


def added_lines(diff: str) -> list[str]:
    """What a mutant changed: the lines its diff (``mutmut show``) adds, without their indentation."""
    return [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]


def explains(note: dict[str, str], diff: str) -> bool:
    """Whether ``note`` is about the mutant whose diff is ``diff``: the line it records is one the
    mutant adds."""
    return note["change"].strip() in added_lines(diff)


def summarize(status: dict[str, str], notes: dict[str, dict[str, str]], diffs: dict[str, str]
              ) -> tuple[dict[str, str], float, list[str], list[str], list[str]]:
    """The judged mutants (skipped and unchecked ones are not judged) with their status, the mutation
    score in % (caught among the judged; a timeout or a killed test process counts as caught), the
    survivors, those without an explanation (no note, or a note about another mutation: see
    :func:`explains`; ``diffs`` holds each survivor's diff), and the notes that explain no survivor
    (their mutant was checked and caught, or is gone)."""
    judged = {name: s for name, s in status.items() if s not in NOT_JUDGED}
    caught = sum(s in CAUGHT for s in judged.values())
    score = 100 * caught / len(judged) if judged else 0.0
    survivors = sorted(name for name, s in judged.items() if s not in CAUGHT)
    unexplained = [name for name in survivors if name not in notes or not explains(notes[name], diffs[name])]
    unused = sorted(name for name in notes if name not in survivors and status.get(name) not in NOT_JUDGED)
    return judged, score, survivors, unexplained, unused


def main() -> int:
    status = verdicts()
    if not status:
        print("no mutants found: run `mutmut run` first (make mutation)")
        return 1
    notes = (yaml.safe_load(NOTES.read_text()) or {}) if NOTES.exists() else {}
    diffs = {name: mutmut("show", name).strip() for name, s in status.items() if s not in NOT_JUDGED | CAUGHT}
    judged, score, survivors, unexplained, unused = summarize(status, notes, diffs)
    caught = len(judged) - len(survivors)

    by_module: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for name, s in status.items():
        by_module[module_of(name)][s] += 1
    lines = ["# Mutation testing", "",
             f"{len(judged)} of {len(status)} mutants checked, {caught} caught: mutation score **{score:.1f} %** "
             f"(required: {REQUIRED_SCORE:.0f} %). {len(survivors)} survived, {len(unexplained)} without an "
             "explanation.", "",
             "| module | mutants | checked | caught | survived |", "| --- | ---: | ---: | ---: | ---: |"]
    for module, counts in sorted(by_module.items()):
        checked = sum(n for s, n in counts.items() if s not in NOT_JUDGED)
        lines.append(f"| `{module}` | {sum(counts.values())} | {checked} | {sum(counts[s] for s in CAUGHT)} | "
                     f"{checked - sum(counts[s] for s in CAUGHT)} |")
    lines += ["", "## Survivors", ""]
    for name in survivors:
        if name not in notes:
            why = "**No explanation yet.**"
        elif name in unexplained:
            why = (f"**The note under this name was written for another mutation** (it adds "
                   f"`{notes[name]['change']}`): {notes[name]['why']}")
        else:
            why = notes[name]["why"]
        lines += [f"### `{name}` ({judged[name]})", "", why, "", "```diff", diffs[name], "```", ""]
    if unused:
        lines += ["## Notes that explain no survivor", "",
                  "Their mutants are caught now or no longer exist; the notes can go.", ""]
        lines += [f"* `{name}`" for name in unused]
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n".join(lines) + "\n")
    print(f"mutation score {score:.1f} % ({caught} of {len(judged)}); {len(survivors)} survivors, "
          f"{len(unexplained)} unexplained, {len(unused)} notes unused; report: {REPORT.relative_to(ROOT)}")
    return 0 if score >= REQUIRED_SCORE and not unexplained else 1


if __name__ == "__main__":
    sys.exit(main())
