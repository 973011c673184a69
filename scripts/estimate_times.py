"""Estimate each notebook's working time from what it contains, and print a table.

Usage (from the repository root):

    python scripts/estimate_times.py                 # the table, from the stored notebooks
    python scripts/estimate_times.py --markdown      # the same as a Markdown table
    python scripts/estimate_times.py --measure       # also execute each notebook to time it (slow)
    python scripts/estimate_times.py --write-readme  # put the estimates into README's time column

The rule (issue 23 §4), counted on the **student's** view of each notebook (cells tagged
`solution` left out):

- **prose**: the words of the markdown cells at 150 words per minute (a word: a run of letters
  or digits; LaTeX commands count as words, which roughly pays for reading formulas);
- **code**: the non-blank lines of the code cells a student reads, at 20 lines per minute (the
  `check_exercise_N` cells and the answer cells are left out: they belong to the exercises;
  nbval's marker comments are not lines a student reads);
- **exercises**: per exercise, 5 minutes to read the prompt and plan, plus 2 minutes per line of
  the stored solution's code (non-blank, not a comment), at least 5 and at most 20 minutes;
- open assignments and projects (`## Open assignment ...`, `## Project ...` sections) are not
  counted: TEACHING.md's rubrics give their hours;
- **run**: the notebook's run time, measured (`RUN_SECONDS`, or `--measure`), rounded up to a
  minute: on a laptop the student mostly waits for the cells that train.

"read + run" is prose + code + run; "with all exercises" adds every exercise. Both are rounded to
5 minutes. The README's time column (`--write-readme`) and TEACHING.md's course plans use these
numbers; `tests/test_student_distribution.py` keeps the README within 20% of them.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
WORDS_PER_MINUTE = 150
CODE_LINES_PER_MINUTE = 20
EXERCISE_BASE_MIN, EXERCISE_PER_LINE_MIN, EXERCISE_MIN, EXERCISE_MAX = 5, 2, 5, 20

# Strict nbval wall time of each notebook, measured alone on this project's 2-core Linux machine
# (2026-12-03, on main before the budget work; `--measure` measures again). 04-06 and 08: after
# the budget work, at load about 2; 04, 06 and 08 with the pretrained base already on disk (03
# pretrains it first; cold, 04 took 56 s), 05 cold (its wide base is its own).
RUN_SECONDS = {"01": 12, "02": 20, "03": 30, "04": 45, "05": 50, "06": 58, "07": 90, "08": 56,
               "09": 28, "10": 42}

WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
MARKER = re.compile(r"^\s*#\s*NBVAL_\w+\s*$")
# Open assignments and projects (after the exercises) are work of hours, timed in TEACHING.md's
# rubrics, not part of a notebook's reading time.
OPEN_TASK = re.compile(r"## (Open assignment|Project)\b")


@dataclass
class Estimate:
    number: str
    words: int
    code_lines: int
    exercise_minutes: list[int]
    run_seconds: float

    @property
    def read_run(self) -> float:
        return (self.words / WORDS_PER_MINUTE + self.code_lines / CODE_LINES_PER_MINUTE
                + math.ceil(self.run_seconds / 60))

    @property
    def total(self) -> float:
        return self.read_run + sum(self.exercise_minutes)


def round5(minutes: float) -> int:
    return int(5 * max(1, round(minutes / 5)))


def tags(cell) -> list[str]:
    return cell.metadata.get("tags", [])


def solution_lines(source: str) -> int:
    return sum(1 for line in source.splitlines()
               if line.strip() and not line.strip().startswith("#")
               and not re.match(r"\s*check_exercise_\d+\(", line))


def exercise_minutes(nb) -> list[int]:
    """One estimate per exercise, from its stored solution code (see the module docstring)."""
    per_exercise: dict[int, int] = {}
    current = None
    for cell in nb.cells:
        match = re.search(r"^### Exercise (\d+)\b", cell.source, flags=re.M) if cell.cell_type == "markdown" else None
        if match:
            current = int(match.group(1))
            per_exercise[current] = 0
        elif cell.cell_type == "markdown" and re.match(r"#{1,2} ", cell.source):
            current = None
        elif current is not None and cell.cell_type == "code" and "solution" in tags(cell):
            per_exercise[current] += solution_lines(cell.source)
    return [min(EXERCISE_MAX, max(EXERCISE_MIN, EXERCISE_BASE_MIN + EXERCISE_PER_LINE_MIN * n))
            for _, n in sorted(per_exercise.items())]


def count(path: Path, run_seconds: float | None = None) -> Estimate:
    nb = nbformat.read(path, as_version=4)
    words = code = 0
    open_task = False
    for cell in nb.cells:
        if cell.cell_type == "markdown" and re.match(r"## ", cell.source):
            open_task = bool(OPEN_TASK.match(cell.source))
        if "solution" in tags(cell) or open_task:
            continue
        if cell.cell_type == "markdown":
            text = re.sub(r"<[^>]+>", " ", cell.source)           # HTML tags are not read
            words += len(WORD.findall(text))
        elif cell.cell_type == "code":
            if "answer" in tags(cell) or re.search(r"^def check_exercise_\d+\(", cell.source, flags=re.M):
                continue
            code += sum(1 for line in cell.source.splitlines() if line.strip() and not MARKER.match(line))
    number = path.name[:2]
    seconds = RUN_SECONDS.get(number, 60) if run_seconds is None else run_seconds
    return Estimate(number, words, code, exercise_minutes(nb), seconds)


def readme_time(e: Estimate) -> str:
    """The README's time column: with all exercises, then reading and running alone."""
    return f"{round5(e.total)} min ({round5(e.read_run)} without the exercises)"


README_ROW = re.compile(r"^(\| (\d\d) \|.*\| )([^|]*?)( \|)$", flags=re.M)


def readme_times(text: str) -> dict[str, str]:
    """{notebook number: time cell} of README's notebook table."""
    table = text[text.index("<!-- notebook-table -->"):text.index("<!-- /notebook-table -->")]
    return {m.group(2): m.group(3) for m in README_ROW.finditer(table)}


def write_readme(estimates: list[Estimate], path: Path = ROOT / "README.md") -> None:
    text = path.read_text(encoding="utf-8")
    start, end = text.index("<!-- notebook-table -->"), text.index("<!-- /notebook-table -->")
    by_number = {e.number: readme_time(e) for e in estimates}
    table = README_ROW.sub(lambda m: m.group(1) + by_number.get(m.group(2), m.group(3)) + m.group(4),
                           text[start:end])
    path.write_text(text[:start] + table + text[end:], encoding="utf-8")


def measure(path: Path) -> float:
    """Wall seconds to execute the notebook top to bottom in a fresh kernel (nbclient)."""
    from nbclient import NotebookClient
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return time.perf_counter() - start


def table(estimates: list[Estimate], markdown: bool = False) -> str:
    head = ["#", "prose words", "code lines", "reading (min)", "run (s)", "exercises (min each)",
            "read + run", "with all exercises"]
    rows = []
    for e in estimates:
        reading = e.words / WORDS_PER_MINUTE + e.code_lines / CODE_LINES_PER_MINUTE
        rows.append([e.number, str(e.words), str(e.code_lines), f"{reading:.0f}", f"{e.run_seconds:.0f}",
                     " + ".join(map(str, e.exercise_minutes)) + f" = {sum(e.exercise_minutes)}",
                     f"{round5(e.read_run)} min", f"{round5(e.total)} min"])
    read_all, total_all = sum(round5(e.read_run) for e in estimates), sum(round5(e.total) for e in estimates)
    rows.append(["all", "", "", "", "", "", f"{read_all // 60} h {read_all % 60} min",
                 f"{total_all // 60} h {total_all % 60} min"])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [head] + rows)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--measure", action="store_true", help="execute each notebook to time it")
    parser.add_argument("--write-readme", action="store_true", help="update README's time column")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    estimates = [count(p, measure(p) if args.measure else None) for p in paths]
    print(table(estimates, markdown=args.markdown))
    if args.write_readme:
        write_readme(estimates)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
