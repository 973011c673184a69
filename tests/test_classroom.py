"""The classroom edition: the exercise convention in the stored notebooks, and the student edition.

The convention (TEACHING.md, "Exercises"): each `### Exercise N` prompt is followed by a visible
`check_exercise_N` cell, an `answer`-tagged cell that runs cleanly unanswered, a `solution`-tagged
`<details>` markdown cell and a `solution`-tagged, collapsed code cell whose first line reveals
nothing. `scripts/make_student_notebooks.py` deletes the `solution` cells and clears the outputs.

Static checks read the stored files. One execution per notebook (nbclient) then proves two things
at once about the student edition:

- **Run All with nothing answered works**: every cell of the student notebook runs in order, the
  `answer` cells unanswered, and nothing raises except the `raises-exception` cells. (Strict nbval
  runs the teacher's notebook, where the solution cells run too, so it cannot show that no later
  cell needs a name that only a solution defines.)
- **Each stored solution, pasted over its answer cell, passes its check**: right before each
  answer cell the run inserts the exercise's solution code as a cell of its own, with the namespace
  saved before it and restored after it, so the pasted solution sees exactly what the answer cell
  would see, prints "Exercise N: correct", and leaves the unanswered run unchanged for the cells
  that follow. (A solution that mutates an object in place, e.g. trains a model defined earlier,
  would leak into later cells; the convention asks solutions to build what they change.)
"""

import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from make_student_notebooks import SOLUTION_TAG, student_notebook  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SOLUTION_FIRST_LINE = "# Solution (hidden: click to expand)"
PROMPT = re.compile(r"^### Exercise (\d+)\b", flags=re.M)
NOT_ATTEMPTED = "Exercise {n}: not attempted yet"
CORRECT = "Exercise {n}: correct"
CELL_TIMEOUT = 300  # seconds, as nbval's --nbval-cell-timeout


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
        assert [c.source for c in student.cells] == [c.source for c in kept]
        assert [tags(c) for c in student.cells] == [tags(c) for c in kept]  # answer, raises-exception
        for cell in student.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None
        nbformat.validate(student)


def test_make_student_notebooks_writes_every_notebook(tmp_path):
    from make_student_notebooks import main
    assert main([str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.ipynb")) == [p.name for p in NOTEBOOKS]


def _proof_notebook(path):
    """The student edition, with each exercise's solution pasted in before its answer cell
    (in a saved-and-restored namespace). Returns the notebook and {cell index: (kind, N)}."""
    teacher = load(path)
    found = exercises(teacher)
    solution_of = {}
    for n, e in found.items():
        assert len(e["answer"]) == 1 and e["solution_code"], (
            f"Exercise {n} needs one 'answer' cell and a 'solution' code cell (see TestConvention)")
        code = "\n\n".join(teacher.cells[i].source for i in e["solution_code"])
        solution_of[teacher.cells[e["answer"][0]].id] = (n, code)
    student = student_notebook(path)
    cells, roles = [], {}
    for cell in student.cells:
        if cell.get("id") in solution_of:
            n, code = solution_of[cell.id]
            cells.append(nbformat.v4.new_code_cell("_classroom_saved = dict(globals())"))
            roles[len(cells)] = ("pasted", n)
            cells.append(nbformat.v4.new_code_cell(code))
            # Restore: drop every name the solution added, put back every name it rebound.
            # One expression statement inside `if`, so it binds no name of its own.
            cells.append(nbformat.v4.new_code_cell(
                "if True:\n"
                "    (lambda saved, g: ([g.pop(k) for k in list(g) if k not in saved],"
                " g.update(saved)))(globals().pop('_classroom_saved'), globals())"))
            roles[len(cells)] = ("answer", n)
        cells.append(cell)
    student.cells = cells
    return student, roles


@pytest.mark.student_run  # deselect with -m "not student_run" (each one executes a notebook)
class _StudentRun:
    """One nbclient run of a notebook's student edition (see the module docstring)."""

    path: Path

    def test_runs_unanswered_and_each_pasted_solution_passes(self, tmp_path):
        nb, roles = _proof_notebook(self.path)
        # Cells tagged raises-exception may raise (nbclient honours the tag); any other error
        # fails here with the cell's traceback. The kernel runs in a temporary folder, so files a
        # notebook writes cannot collide with nbval's run of the same notebook on another worker.
        NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", record_timing=False,
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
        for index, (role, n) in roles.items():
            text = stdout(nb.cells[index])
            expected = (CORRECT if role == "pasted" else NOT_ATTEMPTED).format(n=n)
            assert expected in text, f"{role} cell of Exercise {n} printed {text!r}"
        for cell in nb.cells:
            if cell.cell_type == "code" and "raises-exception" not in tags(cell):
                assert all(o.output_type != "error" for o in cell.outputs), cell.source[:200]
        assert sum(role == "pasted" for role, _ in roles.values()) == len(exercises(load(self.path)))


# One test class per notebook, so that pytest-xdist (--dist loadscope) can run the notebooks'
# student editions on different workers, as it does the notebooks under nbval.
for _path in NOTEBOOKS:
    _name = "TestStudentRun_" + re.sub(r"\W", "_", _path.stem)
    globals()[_name] = type(_name, (_StudentRun,), {"path": _path})
del _path, _name
