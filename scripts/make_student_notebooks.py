"""Write the student edition of every notebook: no solutions, no outputs.

Usage (from the repository root, inside the project's virtual environment):

    python scripts/make_student_notebooks.py DEST          # every notebooks/*.ipynb -> DEST/
    python scripts/make_student_notebooks.py DEST notebooks/03_implementation.ipynb

Each notebook keeps its file name. The edition is made with nbconvert's own preprocessors, so
what it removes is exactly what the exercise convention tags (see TEACHING.md):

- `TagRemovePreprocessor` drops every cell tagged `solution` (the `<details>` explanation and
  the hidden solution code cell);
- `ClearOutputPreprocessor` clears every output and execution count, so no stored result (and
  no "Exercise N: correct") is left to read;
- `TimingAssertsToWarnings` (below) rewrites the `assert` statements of cells tagged `timing`
  into printed warnings: a timing claim (merged as fast as the base, a mixed batch cheaper than
  one pass per row) can fail on a busy laptop, and it must not stop a student's Run All. The
  teacher's edition keeps the asserts, so the tests still check the claims.

Everything else stays: the prompts, the `check_exercise_N` functions, the `answer` cells (which
run cleanly unanswered), and the `raises-exception` tags, so Run All reaches the end. The
student notebooks import `lora_helpers`, so put DEST where the package is importable (the
project's virtual environment installs it).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import nbformat
from nbconvert.exporters import NotebookExporter
from nbconvert.preprocessors import ClearOutputPreprocessor, Preprocessor, TagRemovePreprocessor

ROOT = Path(__file__).resolve().parents[1]
SOLUTION_TAG = "solution"
TIMING_TAG = "timing"
TIMING_WARNING = "Warning (a timing check, not an error; a busy machine can cause it):"


def asserts_to_warnings(source: str) -> str:
    """`source` with every `assert cond[, msg]` statement turned into
    `if not (cond): print(TIMING_WARNING, "cond"[, msg])`, indentation and trailing comments kept.

    Parsed with `ast`, so a multi-line assert, or one inside a loop, is rewritten whole.
    """
    tree = ast.parse(source)          # a timing cell is plain Python (no magics)
    lines = source.splitlines(keepends=True)
    asserts = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Assert)), key=lambda n: n.lineno)
    for node in reversed(asserts):    # bottom-up, so earlier line numbers stay valid
        first, last = node.lineno - 1, node.end_lineno - 1
        indent = lines[first][:node.col_offset]
        tail = lines[last][node.end_col_offset:].rstrip("\n")   # e.g. "   # merged runs at ..."
        if indent.strip() or tail.strip()[:1] not in ("", "#"):
            raise ValueError(f"timing cell line {node.lineno}: write each assert on lines of its own "
                             f"(not after a colon or beside a semicolon):\n{lines[first]}")
        condition = ast.get_source_segment(source, node.test)
        args = [repr(TIMING_WARNING), repr(" ".join(condition.split()) + " did not hold")]
        if node.msg is not None:
            args.append(ast.get_source_segment(source, node.msg))
        rewritten = (f"{indent}if not ({condition}):{tail}\n"
                     f"{indent}    print({', '.join(args)})\n")
        lines[first:last + 1] = [rewritten]
    result = "".join(lines)
    return result.rstrip("\n") if not source.endswith("\n") else result


def student_source(cell: nbformat.NotebookNode) -> str:
    """A kept cell's source in the student edition: timing asserts become warnings."""
    if cell.cell_type == "code" and TIMING_TAG in cell.metadata.get("tags", []):
        return asserts_to_warnings(cell.source)
    return cell.source


class TimingAssertsToWarnings(Preprocessor):
    """Rewrite the asserts of `timing`-tagged code cells into printed warnings (see the module doc)."""

    def preprocess_cell(self, cell, resources, index):
        cell.source = student_source(cell)
        return cell, resources


def student_exporter() -> NotebookExporter:
    """A NotebookExporter that removes `solution`-tagged cells, clears all outputs and turns the
    asserts of `timing`-tagged cells into warnings."""
    exporter = NotebookExporter()
    exporter.register_preprocessor(
        TagRemovePreprocessor(remove_cell_tags={SOLUTION_TAG}, enabled=True), enabled=True)
    exporter.register_preprocessor(ClearOutputPreprocessor(enabled=True), enabled=True)
    exporter.register_preprocessor(TimingAssertsToWarnings(enabled=True), enabled=True)
    return exporter


def student_notebook(path: Path) -> nbformat.NotebookNode:
    """The student edition of the notebook at `path`, as a notebook object (nothing written)."""
    body, _ = student_exporter().from_filename(str(path))
    return nbformat.reads(body, as_version=4)


def write_student_notebooks(dest: Path, paths: list[Path] | None = None) -> list[Path]:
    """Write the student edition of each notebook (default: all of notebooks/) into `dest`."""
    paths = paths if paths is not None else sorted((ROOT / "notebooks").glob("*.ipynb"))
    if not paths:
        raise ValueError(f"no notebooks to convert in {ROOT / 'notebooks'}")
    dest.mkdir(parents=True, exist_ok=True)
    if dest.resolve() == (ROOT / "notebooks").resolve():
        raise ValueError(f"DEST {dest} is the notebooks folder itself; choose another folder, "
                         "the teacher's notebooks must stay as they are")
    exporter = student_exporter()
    written = []
    for path in paths:
        body, _ = exporter.from_filename(str(path))
        nbformat.validate(nbformat.reads(body, as_version=4))
        out = dest / Path(path).name
        out.write_text(body, encoding="utf-8")
        written.append(out)
    return written


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__.strip())
        return 0 if argv else 2
    dest, paths = Path(argv[0]), [Path(a) for a in argv[1:]] or None
    for out in write_student_notebooks(dest, paths):
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
