"""Write the student edition of every notebook: no solutions, no outputs.

Usage (from the repository root, inside the project's virtual environment):

    python scripts/make_student_notebooks.py DEST          # every notebooks/*.ipynb -> DEST/
    python scripts/make_student_notebooks.py DEST notebooks/03_implementation.ipynb

Each notebook keeps its file name. The edition is made with nbconvert's own preprocessors, so
what it removes is exactly what the exercise convention tags (see TEACHING.md):

- `TagRemovePreprocessor` drops every cell tagged `solution` (the `<details>` explanation and
  the hidden solution code cell);
- `ClearOutputPreprocessor` clears every output and execution count, so no stored result (and
  no "Exercise N: correct") is left to read.

Everything else stays: the prompts, the `check_exercise_N` functions, the `answer` cells (which
run cleanly unanswered), and the `raises-exception` tags, so Run All reaches the end. The
student notebooks import `lora_helpers`, so put DEST where the package is importable (the
project's virtual environment installs it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbconvert.exporters import NotebookExporter
from nbconvert.preprocessors import ClearOutputPreprocessor, TagRemovePreprocessor

ROOT = Path(__file__).resolve().parents[1]
SOLUTION_TAG = "solution"


def student_exporter() -> NotebookExporter:
    """A NotebookExporter that removes `solution`-tagged cells and clears all outputs."""
    exporter = NotebookExporter()
    exporter.register_preprocessor(
        TagRemovePreprocessor(remove_cell_tags={SOLUTION_TAG}, enabled=True), enabled=True)
    exporter.register_preprocessor(ClearOutputPreprocessor(enabled=True), enabled=True)
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
