"""The classroom edition: the exercise convention in the stored notebooks, and the student edition.

The convention (TEACHING.md, "Exercises"): each `### Exercise N` prompt is followed by a visible
`check_exercise_N` cell, an `answer`-tagged cell that runs cleanly unanswered, a `solution`-tagged
`<details>` markdown cell and a `solution`-tagged, collapsed code cell whose first line reveals
nothing. `scripts/make_student_notebooks.py` deletes the `solution` cells and clears the outputs.

Static checks read the stored files. One execution per notebook then proves, through
scripts/grade.py (the grader teachers use), three things at once about the student edition:

- **Run All with nothing answered works**: every cell of the student notebook runs in order, the
  `answer` cells unanswered, and nothing raises except the `raises-exception` cells. (Strict nbval
  runs the teacher's notebook, where the solution cells run too, so it cannot show that no later
  cell needs a name that only a solution defines.)
- **The grader scores synthetic submissions right**: right before each answer cell it grades,
  each in a fork of the kernel, the stored solution (and the other right answers of
  tests/classroom_cases.py), the unanswered stub, plausible wrong answers (each must be rejected
  with a hint) and gaming answers (print the verdict, redefine the check, objects that equal
  everything, asking the check in a loop, patching torch or builtins, ending the process,
  rebinding or mutating what the check reads: none may score).
- **Every exercise has a wrong-answer case** (a static test over classroom_cases.WRONG).
"""

import copy
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from make_student_notebooks import SOLUTION_TAG, student_notebook, student_source  # noqa: E402
from grade import answer_spec, grade_notebook  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
import classroom_cases  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SOLUTION_FIRST_LINE = "# Solution (hidden: click to expand)"
PROMPT = re.compile(r"^### Exercise (\d+)\b", flags=re.M)
NOT_ATTEMPTED = "Exercise {n}: not attempted yet"
CORRECT = "Exercise {n}: correct"
CELL_TIMEOUT = 900  # seconds for one cell; a grading cell runs every submission's answer
ANSWER_TIMEOUT = 120  # seconds for one submission's answer and check


def load(path):
    return nbformat.read(path, as_version=4)


def tags(cell):
    return cell.metadata.get("tags", [])


def stdout(cell):
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")


def all_output_text(cell):
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.extend(v for k, v in out.get("data", {}).items() if k.startswith("text/"))
    return "".join(parts)


def exercises(nb):
    """{N: {"prompt": i, "check": i, "answer": [i], "solution_md": [i], "solution_code": [i]}}.

    An exercise's cells run from its prompt to the next prompt or the next `#`/`##` heading.
    """
    found, current = {}, None
    for i, cell in enumerate(nb.cells):
        match = PROMPT.search(cell.source) if cell.cell_type == "markdown" else None
        if match:
            current = int(match.group(1))
            assert current not in found, f"two prompts for Exercise {current}"
            found[current] = {"prompt": i, "check": None, "answer": [], "solution_md": [],
                              "solution_code": []}
            continue
        if cell.cell_type == "markdown" and re.match(r"#{1,2} ", cell.source):
            current = None
        if current is None:
            continue
        entry = found[current]
        if SOLUTION_TAG in tags(cell):
            entry["solution_code" if cell.cell_type == "code" else "solution_md"].append(i)
        elif "answer" in tags(cell):
            entry["answer"].append(i)
        elif cell.cell_type == "code" and re.search(rf"^def check_exercise_{current}\(",
                                                    cell.source, flags=re.M):
            entry["check"] = i
    return found


def exercise_of(nb, index):
    """The exercise number whose cells include cell `index`."""
    for n, entry in exercises(nb).items():
        if index in entry["answer"] + entry["solution_code"] + entry["solution_md"]:
            return n
    raise AssertionError(f"cell {index} belongs to no exercise")


# ---------------------------------------------------------------------------------------------
# The convention, read from the stored (teacher's) notebooks
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
class TestConvention:
    def test_every_exercise_has_check_answer_and_solution_in_order(self, path):
        found = exercises(load(path))
        assert found, "no '### Exercise N' prompt"
        assert sorted(found) == list(range(1, len(found) + 1)), f"exercises {sorted(found)}"
        for n, e in found.items():
            assert e["check"] is not None, f"Exercise {n}: no cell defining check_exercise_{n}"
            assert len(e["answer"]) == 1, f"Exercise {n}: one 'answer'-tagged cell, got {e['answer']}"
            assert e["solution_md"], f"Exercise {n}: no 'solution'-tagged <details> cell"
            assert e["solution_code"], f"Exercise {n}: no 'solution'-tagged code cell"
            assert e["prompt"] < e["check"] < e["answer"][0] < min(e["solution_md"] + e["solution_code"]), (
                f"Exercise {n}: the order is prompt, check, answer, solution")

    def test_answer_cells_run_unanswered_and_call_the_check(self, path):
        nb = load(path)
        for n, e in exercises(nb).items():
            cell = nb.cells[e["answer"][0]]
            assert cell.cell_type == "code"
            assert re.search(rf"\bcheck_exercise_{n}\(", cell.source), (
                f"Exercise {n}: the answer cell calls check_exercise_{n}")
            text = stdout(cell)
            assert NOT_ATTEMPTED.format(n=n) in text, f"Exercise {n}: stored output {text!r}"

    def test_no_answer_or_check_cell_stores_correct(self, path):
        # "Exercise N: correct" may appear only under a (hidden) solution cell.
        nb = load(path)
        for cell in nb.cells:
            if cell.cell_type == "code" and SOLUTION_TAG not in tags(cell):
                assert not re.search(r"Exercise \d+: correct", all_output_text(cell)), cell.source[:200]

    def test_check_functions_have_a_not_attempted_branch(self, path):
        nb = load(path)
        for n, e in exercises(nb).items():
            source = nb.cells[e["check"]].source
            # The unanswered stub is None, or NotImplemented where None is a correct answer
            # (a function that works in place and returns nothing).
            assert re.search(r"\b(None|NotImplemented)\b", source) and "not attempted yet" in source, (
                f"check_exercise_{n} must print 'Exercise {n}: not attempted yet ...' for the "
                "unanswered stub (None, or NotImplemented)")

    def test_solution_code_cells_are_collapsed_and_start_with_a_neutral_line(self, path):
        nb = load(path)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code" or SOLUTION_TAG not in tags(cell):
                continue
            first = cell.source.split("\n", 1)[0]
            assert first == SOLUTION_FIRST_LINE, f"cell {i}: first line {first!r}"
            jupyter = cell.metadata.get("jupyter", {})
            assert jupyter.get("source_hidden") is True, f"cell {i}: not collapsed"
            assert jupyter.get("outputs_hidden") is True, f"cell {i}: output not collapsed"
            n = exercise_of(nb, i)
            assert re.search(rf"\bcheck_exercise_{n}\(", cell.source), f"cell {i} calls no check"

    def test_solution_code_cells_print_only_the_check_line(self, path):
        # JupyterLab (4.6) drops "outputs_hidden" when a cell runs: after Run All a solution
        # cell's output is on screen under its collapsed source. So it may print only the
        # check's verdict (figures are fine), never a value that gives the answer away.
        nb = load(path)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code" or SOLUTION_TAG not in tags(cell):
                continue
            texts = [out.get("text", "") for out in cell.outputs if out.output_type == "stream"]
            texts += [v for out in cell.outputs for k, v in out.get("data", {}).items()
                      if k.startswith("text/") and not any(m.startswith("image/") for m in out.data)]
            lines = [line for line in "\n".join(texts).splitlines() if line.strip()]
            extra = [line for line in lines if not re.fullmatch(r"Exercise \d+: correct", line)]
            assert not extra, f"cell {i} prints {extra[:3]}"

    def test_solution_markdown_cells_are_only_a_details_block(self, path):
        for i, cell in enumerate(load(path).cells):
            if cell.cell_type != "markdown" or SOLUTION_TAG not in tags(cell):
                continue
            text = cell.source.strip()
            assert text.startswith("<details><summary>Solution</summary>"), f"cell {i}: {text[:80]!r}"
            assert text.endswith("</details>") and text.count("<details>") == 1, f"cell {i}"

    def test_every_solution_is_tagged(self, path):
        # Anything that looks like a solution must carry the tag, or the student edition keeps it.
        for i, cell in enumerate(load(path).cells):
            hidden = cell.metadata.get("jupyter", {}).get("source_hidden")
            looks = ("<summary>Solution" in cell.source or SOLUTION_FIRST_LINE in cell.source
                     or (cell.cell_type == "code" and hidden))
            assert not looks or SOLUTION_TAG in tags(cell), f"cell {i} is an untagged solution"


# ---------------------------------------------------------------------------------------------
# The student edition
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
class TestStudentEdition:
    def test_holds_no_solution(self, path):
        student = student_notebook(path)
        for i, cell in enumerate(student.cells):
            assert SOLUTION_TAG not in tags(cell), f"cell {i} is tagged solution"
            assert "# Solution (hidden" not in cell.source, f"cell {i}"
            assert "<summary>Solution" not in cell.source, f"cell {i}"
            assert not cell.metadata.get("jupyter", {}).get("source_hidden"), f"cell {i} is hidden"

    def test_keeps_everything_else_and_clears_outputs(self, path):
        teacher, student = load(path), student_notebook(path)
        kept = [c for c in teacher.cells if SOLUTION_TAG not in tags(c)]
        # the same cells, word for word, except that a `timing` cell's asserts become warnings
        assert [c.source for c in student.cells] == [student_source(c) for c in kept]
        assert [tags(c) for c in student.cells] == [tags(c) for c in kept]  # answer, raises-exception
        for cell in student.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None
        nbformat.validate(student)


def test_make_student_notebooks_writes_every_notebook(tmp_path):
    from make_student_notebooks import main
    assert main([str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.ipynb")) == [p.name for p in NOTEBOOKS]


# ---------------------------------------------------------------------------------------------
# Grading: one run per notebook grades synthetic submissions and runs the student edition
# ---------------------------------------------------------------------------------------------

def _is_function_exercise(student, n):
    entry = exercises(student)[n]
    name, _ = answer_spec(student.cells[entry["answer"][0]].source, n)
    return bool(re.search(rf"^def {name}\(", student.cells[entry["answer"][0]].source, flags=re.M)), name


def submissions_for(path):
    """{submission name: (notebook, {N: expected status or "not correct"})} for one notebook.

    - "right": every answer cell replaced by the stored solution's code;
    - "right variant i": the i-th extra right answer of classroom_cases.RIGHT, where there is one;
    - "unanswered": the student edition as it is (and one exercise's answer cell deleted);
    - "wrong i": the i-th wrong answer of classroom_cases.WRONG for each exercise that has one;
    - "gaming: ...": each gaming template for every exercise, and the specific games."""
    teacher, student = load(path), student_notebook(path)
    stem = path.stem
    found = exercises(teacher)
    answer_ids = {n: teacher.cells[e["answer"][0]].id for n, e in found.items()}
    solutions = {n: "\n\n".join(teacher.cells[i].source for i in e["solution_code"])
                 for n, e in found.items()}

    def make(sources):
        nb = copy.deepcopy(student)
        for cell in nb.cells:
            for n, cell_id in answer_ids.items():
                if cell.get("id") == cell_id and n in sources:
                    cell.source = sources[n]
        return nb

    subs = {"right": (make(solutions), {n: "correct" for n in found})}
    for n, variants in classroom_cases.RIGHT.get(stem, {}).items():
        for i, source in enumerate(variants):
            subs[f"right variant {n}.{i + 1}"] = (make({n: source}), {
                m: "correct" if m == n else "not attempted" for m in found})
    unanswered = make({})
    first = unanswered.cells.index(next(c for c in unanswered.cells if c.get("id") == answer_ids[1]))
    del unanswered.cells[first]
    subs["unanswered"] = (unanswered, {n: "missing" if n == 1 else "not attempted" for n in found})
    wrong = classroom_cases.WRONG.get(stem, {})
    for i in range(max((len(v) for v in wrong.values()), default=0)):
        chosen = {n: v[i] for n, v in wrong.items() if len(v) > i}
        subs[f"wrong {i + 1}"] = (make(chosen), {
            n: "wrong" if n in chosen else "not attempted" for n in found})
    for game, templates in classroom_cases.GAMING.items():
        sources = {}
        for n in found:
            function, name = _is_function_exercise(student, n)
            sources[n] = templates["function" if function else "value"].format(
                n=n, name=name, wrong=wrong[n][0] if n in wrong else "")
        subs[f"gaming: {game}"] = (make(sources), {n: "not correct" for n in found})
    for n, games in classroom_cases.SPECIFIC_GAMING.get(stem, {}).items():
        for i, source in enumerate(games):
            subs[f"gaming: specific {n}.{i + 1}"] = (make({n: source}), {
                m: "not correct" if m == n else "not attempted" for m in found})
    return subs


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_exercise_has_a_wrong_answer_case(path):
    found = exercises(load(path))
    cases = classroom_cases.WRONG.get(path.stem, {})
    assert sorted(cases) == sorted(found), (
        f"tests/classroom_cases.py: WRONG[{path.stem!r}] covers exercises {sorted(cases)}, "
        f"the notebook has {sorted(found)}")


@pytest.mark.student_run  # deselect with -m "not student_run" (each one executes a notebook)
class _StudentRun:
    """One run of a notebook's student edition through scripts/grade.py (see the module docstring)."""

    path: Path

    def test_grades_right_wrong_and_gaming_submissions_and_runs_unanswered(self, tmp_path):
        subs = submissions_for(self.path)
        grades, nb = grade_notebook(self.path, {k: v[0] for k, v in subs.items()}, tmp_path,
                                    timeout=ANSWER_TIMEOUT, kernel_timeout=CELL_TIMEOUT)
        # Run All with nothing answered works: no error outside raises-exception cells, and each
        # (unanswered) answer cell of the run itself says "not attempted".
        for cell in nb.cells:
            if cell.cell_type == "code" and "raises-exception" not in tags(cell):
                assert all(o.output_type != "error" for o in cell.outputs), cell.source[:200]
        for n, e in exercises(nb).items():
            assert NOT_ATTEMPTED.format(n=n) in stdout(nb.cells[e["answer"][0]])
        problems = []
        for who, (_, expected) in subs.items():
            for n, want in expected.items():
                got = grades[who][n]
                ok = (got["status"] != "correct" if want == "not correct" else got["status"] == want)
                if want == "wrong" and ok:  # a wrong answer gets a hint, and not the check's bare assert
                    ok = bool(got["message"]) and "has no hint" not in got["message"]
                if not ok:
                    problems.append(f"{who}, Exercise {n}: expected {want}, got {got}")
        assert not problems, "\n".join(problems)


# One test class per notebook, so that pytest-xdist (--dist loadscope) can run the notebooks'
# student editions on different workers, as it does the notebooks under nbval.
for _path in NOTEBOOKS:
    _name = "TestStudentRun_" + re.sub(r"\W", "_", _path.stem)
    globals()[_name] = type(_name, (_StudentRun,), {"path": _path})
del _path, _name
