"""Re-execute notebooks in place so their stored outputs come from the current code.

Usage (from the repository root, inside the project's virtual environment):

    python scripts/execute_notebooks.py                # every notebooks/*.ipynb
    python scripts/execute_notebooks.py notebooks/03_implementation.ipynb

Each notebook runs top to bottom in a fresh kernel with the same environment variables the
tests use (see conftest.py), and its wall time is printed. Metadata is normalised (kernelspec
python3, no timings, no widget state) so that diffs show only real changes.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from conftest import NOTEBOOK_ENV  # noqa: E402  (the one place these settings live)

KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def _coalesce_streams(outputs: list) -> list:
    """Merge consecutive stdout (or stderr) outputs into one.

    How the kernel splits a cell's printing into messages depends on timing, so without this a
    re-run can store the same text in one output or in two: a diff with no change in it.
    """
    merged = []
    for out in outputs:
        previous = merged[-1] if merged else None
        if (out.output_type == "stream" and previous is not None
                and previous.output_type == "stream" and previous.name == out.name):
            previous.text += out.text
        else:
            merged.append(out)
    return merged


def execute(path: Path) -> float:
    """Execute one notebook in place; return its wall time in seconds."""
    nb = nbformat.read(path, as_version=4)
    # Cells marked "# NBVAL_RAISES_EXCEPTION" demonstrate an error on purpose. nbval reads the
    # comment; Jupyter (Run All), nbclient and nbval also read the "raises-exception" tag, and
    # without the *stored* tag Run All in JupyterLab stops at the first such cell. Store both.
    for cell in nb.cells:
        if cell.cell_type == "code" and "NBVAL_RAISES_EXCEPTION" in cell.source:
            tags = cell.metadata.setdefault("tags", [])
            if "raises-exception" not in tags:
                tags.append("raises-exception")
    start = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    # The kernel's full language_info (nbclient fills it in): with only {"name": "python"}
    # stored, JupyterLab marks a notebook modified as soon as its kernel starts.
    nb.metadata = {"kernelspec": KERNELSPEC, "language_info": dict(nb.metadata.language_info)}
    nb.nbformat, nb.nbformat_minor = 4, 5
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if not cell.metadata.get("tags", True):
            cell.metadata.pop("tags")
        if "outputs" in cell:
            cell.outputs = _coalesce_streams(cell.outputs)
        for out in cell.get("outputs", []):
            if out.output_type == "error":  # nbval compares ename/evalue; the traceback holds
                out.traceback = [f"{out.ename}: {out.evalue}"]  # machine paths, so drop it
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return seconds


def main(argv: list[str]) -> None:
    os.environ.update(NOTEBOOK_ENV)
    os.environ.pop("MPLBACKEND", None)
    paths = [Path(a) for a in argv] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in paths:
        print(f"{path.name}: {execute(path.resolve()):.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
