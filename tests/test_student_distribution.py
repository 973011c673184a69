"""What students receive: the student distribution, and the student edition's own text and timing cells.

- `scripts/make_student_distribution.py OUT/` writes the package as a wheel, the student notebooks,
  a requirements file and a README, and nothing else (no solution, no TEACHING.md, no tests). One
  test builds it, installs the wheel into a fresh virtual environment and runs notebook 01 there,
  to the end. To stay fast and offline, the fresh environment sees the other dependencies (torch,
  Jupyter, ...) through a `.pth` line naming this interpreter's site-packages, installed after the
  wheel; `lora_helpers` itself must come from the wheel, and the test asserts where it was
  imported from, inside the kernel that ran the notebook.
- Timing asserts (cells tagged `timing`) become printed warnings in the student edition, so a busy
  laptop cannot stop a student's Run All; the teacher's edition keeps them.
- The student edition does not promise a hidden solution it does not contain.
"""

import ast
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from make_student_distribution import make_distribution, student_requirements  # noqa: E402
from make_student_notebooks import (TIMING_TAG, TIMING_WARNING, asserts_to_warnings,  # noqa: E402
                                    student_notebook)

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CLOCK = re.compile(r"\btime\.(thread_time|process_time|perf_counter|monotonic|time)\(")

# The timing claims that a busy laptop can break, found by what their cells compute (issue 23 §3).
TIMING_CELLS = [
    ("03_implementation.ipynb", "fastest_times([pretrained, deployed, model]"),
    ("05_applications.ipynb", "paired_time_ratio(merged"),
    ("07_lora_on_a_language_model.ipynb", 'cost["mixed batch"].append('),
    ("07_lora_on_a_language_model.ipynb", "L.generate(model, prompt_ids, NEW_TOKENS"),
]
# Notebooks that other branches are editing now; their timing tags and exercise text come after
# the merge. strict: the test fails as soon as they pass, so this list cannot go stale.
PENDING_TIMING: set[str] = set()
PENDING_TEXT: set[str] = set()


def pending(path, names):
    marks = [pytest.mark.xfail(strict=True, reason="edited after the merge")] if path.name in names else []
    return pytest.param(path, marks=marks, id=path.name)


def load(path):
    return nbformat.read(path, as_version=4)


def tags(cell):
    return cell.metadata.get("tags", [])


def assert_statements(source):
    return [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Assert)]


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


# ---------------------------------------------------------------------------------------------
# The distribution
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def distribution(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "lora-course"
    make_distribution(out)
    return out


def test_holds_only_the_wheel_the_student_notebooks_requirements_and_readme(distribution):
    files = sorted(str(p.relative_to(distribution)) for p in distribution.rglob("*") if p.is_file())
    wheels = [f for f in files if f.endswith(".whl")]
    assert len(wheels) == 1 and re.fullmatch(r"lora_helpers-[\w.]+-py3-none-any\.whl", wheels[0])
    expected = sorted(wheels + ["README.md", "requirements.txt"]
                      + [f"notebooks/{p.name}" for p in NOTEBOOKS])
    assert files == expected                      # no TEACHING.md, no tests/, no scripts/
    with zipfile.ZipFile(distribution / wheels[0]) as wheel:
        names = wheel.namelist()
    assert all(n.startswith(("lora_helpers/", "lora_helpers-")) for n in names), names
    assert "lora_helpers/__init__.py" in names and any(n.startswith("lora_helpers/corpus/") for n in names)
    shipped = sorted(p.name for p in (ROOT / "lora_helpers" / "weights").glob("*.safetensors"))
    assert shipped and sorted(n.split("/")[-1] for n in names if n.startswith("lora_helpers/weights/")) == shipped


def test_notebooks_hold_no_solution_and_no_output(distribution):
    for path in sorted((distribution / "notebooks").glob("*.ipynb")):
        for i, cell in enumerate(load(path).cells):
            assert "solution" not in tags(cell), f"{path.name} cell {i}"
            assert "<summary>Solution" not in cell.source and "# Solution (hidden" not in cell.source
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name} cell {i}"


def test_requirements_name_the_wheel_not_the_repository(distribution):
    text = (distribution / "requirements.txt").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert not any(line.startswith("-e") for line in lines)
    wheel = next(distribution.glob("*.whl")).name
    assert f"./{wheel}" in lines
    names = {re.split(r"[\s=<>!~;\[]", line, maxsplit=1)[0].lower() for line in lines}
    assert {"torch", "jupyter", "ipywidgets", "tqdm", "peft"} <= names
    assert not names & {"pytest", "nbval", "pytest-xdist", "hypothesis"}
    # Every other pin is the repository's own line, unchanged.
    repo = {line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()}
    assert all(line in repo for line in lines if not line.endswith(".whl"))


def test_student_requirements_drop_the_comment_of_a_dropped_line():
    text = student_requirements("x.whl")
    assert "Runs the tests on two processes" not in text          # pytest-xdist's comment
    assert "The package itself, editable" not in text             # -e .'s comment


def test_the_wheel_installs_in_a_fresh_venv_and_runs_notebook_01(distribution, tmp_path, monkeypatch):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv_python(venv)
    wheel = next(distribution.glob("*.whl"))
    # The running pip installs into the new environment; --no-deps --no-index: nothing downloaded.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # Only after the wheel is installed (pip must not see the repository's editable install):
    # the dependencies, through this interpreter's site-packages.
    outer = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    (site / "zz_course_dependencies.pth").write_text("\n".join(outer) + "\n")

    kernels = tmp_path / "jupyter" / "kernels" / "student-venv"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "student venv", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.delenv("PYTHONPATH", raising=False)

    notebooks = distribution / "notebooks"
    nb = load(notebooks / "01_introduction.ipynb")
    nb.cells.append(nbformat.v4.new_code_cell(
        "import sys, lora_helpers\nprint(sys.executable)\nprint(lora_helpers.__file__)"))
    NotebookClient(nb, timeout=300, kernel_name="student-venv", record_timing=False,
                   resources={"metadata": {"path": str(notebooks)}}).execute()
    for cell in nb.cells:
        if cell.cell_type == "code" and "raises-exception" not in tags(cell):
            assert all(o.output_type != "error" for o in cell.outputs), cell.source[:200]
    # The two prints can arrive as one stream output or as two (a busy machine): join them.
    printed = "".join(o["text"] for o in nb.cells[-1].outputs if o.output_type == "stream")
    executable, imported = printed.split()
    assert Path(executable).parent.parent.resolve() == venv.resolve()
    assert Path(imported).resolve().is_relative_to(site.resolve()), imported
    assert not Path(imported).resolve().is_relative_to(ROOT.resolve()), imported


# ---------------------------------------------------------------------------------------------
# Timing asserts become warnings in the student edition
# ---------------------------------------------------------------------------------------------

def test_a_rewritten_assert_warns_instead_of_raising(capsys):
    source = ("x = 2.0\n"
              "assert 0.5 < x < 1.5, f'x = {x}'      # a timing claim\n"
              "for y in (1, 3):\n"
              "    assert (y\n"
              "            < 2)\n"
              "assert x > 1\n")
    rewritten = asserts_to_warnings(source)
    assert not assert_statements(rewritten)
    assert "# a timing claim" in rewritten
    exec(compile(rewritten, "<cell>", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"{TIMING_WARNING} 0.5 < x < 1.5 did not hold x = 2.0",
                       f"{TIMING_WARNING} y < 2 did not hold"]
    with pytest.raises(AssertionError):                       # the teacher's source still asserts
        exec(compile(source, "<cell>", "exec"), {})


def test_an_assert_that_shares_its_line_is_refused():
    for source in ("if True: assert False\n", "assert True; x = 1\n"):
        with pytest.raises(ValueError, match="lines of its own"):
            asserts_to_warnings(source)


@pytest.mark.parametrize("name, snippet", TIMING_CELLS)
def test_the_timing_claims_are_tagged(name, snippet):
    cells = [c for c in load(ROOT / "notebooks" / name).cells if snippet in c.source]
    assert len(cells) == 1, f"{name}: {len(cells)} cells contain {snippet!r}"
    assert TIMING_TAG in tags(cells[0]) and assert_statements(cells[0].source)


@pytest.mark.parametrize("path", [pending(p, PENDING_TIMING) for p in NOTEBOOKS])
def test_timing_cells_assert_for_the_teacher_and_warn_for_the_student(path):
    teacher = [c for c in load(path).cells if TIMING_TAG in tags(c)]
    student = {c.id: c for c in student_notebook(path).cells}
    for cell in teacher:
        assert cell.cell_type == "code" and assert_statements(cell.source), cell.source[:200]
        # Only measurements belong here: a cell that asserts something exact keeps it elsewhere.
        assert CLOCK.search(cell.source) or "cpu_time(" in cell.source or "fastest_times(" in cell.source
        edition = student[cell.id].source
        assert not assert_statements(edition) and "print(" + repr(TIMING_WARNING) in edition
    # Every cell that reads a clock and asserts is a timing cell.
    for cell in load(path).cells:
        if cell.cell_type == "code" and CLOCK.search(cell.source) and assert_statements(cell.source):
            assert TIMING_TAG in tags(cell), f"{path.name}: untagged timing assert:\n{cell.source[:300]}"


# ---------------------------------------------------------------------------------------------
# The student edition's text
# ---------------------------------------------------------------------------------------------

HIDDEN_SOLUTION = re.compile(
    r"(hidden|collapsed|folded)\W+(\w+\W+){0,3}solution|solution\W+(\w+\W+){0,3}(hidden|collapsed)"
    r"|click to expand", re.I)


@pytest.mark.parametrize("path", [pending(p, PENDING_TEXT) for p in NOTEBOOKS])
def test_the_student_edition_promises_no_hidden_solution(path):
    for i, cell in enumerate(student_notebook(path).cells):
        if cell.cell_type == "markdown":
            match = HIDDEN_SOLUTION.search(cell.source)
            assert not match, f"cell {i} promises a solution the student edition lacks: {match.group(0)!r}"


# ---------------------------------------------------------------------------------------------
# The README's times come from scripts/estimate_times.py
# ---------------------------------------------------------------------------------------------

def test_readme_times_are_within_20_percent_of_the_estimate():
    import estimate_times as E
    listed = E.readme_times((ROOT / "README.md").read_text(encoding="utf-8"))
    assert sorted(listed) == [p.name[:2] for p in NOTEBOOKS]
    for path in NOTEBOOKS:
        e = E.count(path)
        match = re.fullmatch(r"(\d+) min \((\d+) without the exercises\)", listed[path.name[:2]])
        assert match, f"{path.name}: README time {listed[path.name[:2]]!r}"
        for shown, estimate in zip(map(int, match.groups()), (e.total, e.read_run)):
            assert abs(shown - estimate) <= 0.2 * estimate, (
                f"{path.name}: README says {shown} min, the estimate is {estimate:.0f}: "
                "run scripts/estimate_times.py --write-readme")


def test_estimate_counts_what_a_student_reads(tmp_path):
    import estimate_times as E
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Title\n\nTwo words " + "word " * 148),   # 151 words
        nbformat.v4.new_code_cell("# NBVAL_IGNORE_OUTPUT\nx = 1\n\ny = 2"),           # 2 lines
        nbformat.v4.new_markdown_cell("### Exercise 1 · Count"),
        nbformat.v4.new_code_cell("def check_exercise_1(answer):\n    pass"),          # not read
        nbformat.v4.new_code_cell("answer = None\ncheck_exercise_1(answer)"),
        nbformat.v4.new_markdown_cell("<details><summary>Solution</summary>secret words</details>"),
        nbformat.v4.new_code_cell("# Solution (hidden: click to expand)\na = 1\nb = 2\ncheck_exercise_1(a)"),
        nbformat.v4.new_markdown_cell("## Open assignment · Hours of work\n\n" + "word " * 500),  # not counted
        nbformat.v4.new_markdown_cell("## Summary"),
    ]
    nb.cells[4].metadata["tags"] = ["answer"]
    nb.cells[5].metadata["tags"] = nb.cells[6].metadata["tags"] = ["solution"]
    path = tmp_path / "10_test.ipynb"
    nbformat.write(nb, path)
    e = E.count(path, run_seconds=30)
    assert (e.words, e.code_lines) == (151 + 3 + 1, 2)     # + "Exercise 1 Count", + "Summary"
    assert e.exercise_minutes == [5 + 2 * 2]                # two solution lines
    assert e.read_run == pytest.approx(155 / 150 + 2 / 20 + 1)
