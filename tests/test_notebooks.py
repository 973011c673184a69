"""Hygiene of the stored notebooks: strict nbval compares their outputs, so they must be clean.

These checks read the .ipynb files; executing them is nbval's job (the same pytest run).
"""

import json
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
EXPECTED = [
    "01_introduction.ipynb",
    "02_mathematical_formulation.ipynb",
    "03_implementation.ipynb",
    "04_visualization.ipynb",
    "05_applications.ipynb",
    "06_understanding_low_rank_updates.ipynb",
    "07_lora_on_a_language_model.ipynb",
    "08_lora_variants.ipynb",
    "09_peft_and_scaling.ipynb",
    "10_lora_beyond_linear.ipynb",
]
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
MAX_BYTES = 1_500_000       # one notebook
MAX_TOTAL_BYTES = 4_000_000  # all of them
REQUIRED_HEADINGS = ["learning objectives", "prerequisites", "estimated time", "exercises",
                     "summary"]
ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
MACHINE_PATH = re.compile(r"(/home/|/root/|/tmp/|/work/|/Users/|[A-Z]:\\\\|site-packages)")


def load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def code_cells(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def source(cell):
    return "".join(cell["source"])


def output_text(cell):
    parts = []
    for out in cell.get("outputs", []):
        parts.append("".join(out.get("text", "")))
        for key, value in out.get("data", {}).items():
            if key.startswith("text/"):
                parts.append("".join(value))
        parts.append(str(out.get("evalue", "")))
        parts.extend(out.get("traceback", []))
    return "\n".join(parts)


def test_exactly_the_planned_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == EXPECTED


def test_total_size_within_budget():
    assert sum(p.stat().st_size for p in NOTEBOOKS) <= MAX_TOTAL_BYTES


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
class TestNotebook:
    def test_executed_top_to_bottom(self, path):
        counts = [c["execution_count"] for c in code_cells(load(path))]
        assert counts == list(range(1, len(counts) + 1)), "re-run scripts/execute_notebooks.py"

    def test_no_errors_or_stderr_except_marked_cells(self, path):
        for cell in code_cells(load(path)):
            for out in cell["outputs"]:
                if out["output_type"] == "error":
                    assert "NBVAL_RAISES_EXCEPTION" in source(cell), source(cell)[:200]
                assert out.get("name") != "stderr", f"stderr stored: {''.join(out['text'])[:300]}"

    def test_streams_are_coalesced(self, path):
        # One stdout output per cell: how the kernel splits printing into messages depends on
        # timing, so split streams would make re-executions differ (execute_notebooks.py merges).
        for cell in code_cells(load(path)):
            kinds = [(o["output_type"], o.get("name")) for o in cell["outputs"]]
            assert all(a != b or a[0] != "stream" for a, b in zip(kinds, kinds[1:])), source(cell)[:200]

    def test_expected_errors_are_tagged_for_jupyter(self, path):
        # Run All in JupyterLab stops at an error unless the cell's stored metadata carries the
        # "raises-exception" tag; nbval reads the comment. Every such cell needs both.
        for cell in code_cells(load(path)):
            marked = "NBVAL_RAISES_EXCEPTION" in source(cell)
            tagged = "raises-exception" in cell["metadata"].get("tags", [])
            assert marked == tagged, source(cell)[:200]

    def test_imports_lora_helpers(self, path):
        assert any("lora_helpers" in source(c) for c in code_cells(load(path)))

    def test_metadata(self, path):
        nb = load(path)
        assert nb["metadata"]["kernelspec"]["name"] == "python3"
        assert (nb["nbformat"], nb["nbformat_minor"]) == (4, 5)
        assert all("id" in c for c in nb["cells"])

    def test_no_addresses_or_machine_paths_in_outputs(self, path):
        for cell in code_cells(load(path)):
            text = output_text(cell)
            assert not ADDRESS.search(text), text[:300]
            assert not MACHINE_PATH.search(text), text[:300]

    def test_size_within_budget(self, path):
        assert path.stat().st_size <= MAX_BYTES

    def test_structure(self, path):
        nb = load(path)
        first = source(nb["cells"][0])
        assert nb["cells"][0]["cell_type"] == "markdown" and first.startswith("# ")
        markdown = "\n".join(source(c).lower() for c in nb["cells"] if c["cell_type"] == "markdown")
        missing = [h for h in REQUIRED_HEADINGS if h not in markdown]
        assert not missing, f"missing sections: {missing}"
        assert "<details>" in markdown, "exercise solutions go in collapsed <details> blocks"

    def test_training_outputs_are_not_compared(self, path):
        # Progress bars and timings vary per run: they belong in NBVAL_IGNORE_OUTPUT cells.
        for cell in code_cells(load(path)):
            if re.search(r"\btqdm\b|perf_counter|time\.time\(", source(cell)) and cell["outputs"]:
                assert "NBVAL_IGNORE_OUTPUT" in source(cell), source(cell)[:200]


ROBUST = ["03_implementation.ipynb", "04_visualization.ipynb", "05_applications.ipynb",
          "06_understanding_low_rank_updates.ipynb", "07_lora_on_a_language_model.ipynb",
          "08_lora_variants.ipynb", "10_lora_beyond_linear.ipynb"]


def _robustness_script():
    sys.path.insert(0, str(ROOT / "scripts"))
    import check_robustness
    return check_robustness


@pytest.mark.parametrize("name", ROBUST)
def test_notebooks_that_train_take_their_seeds_from_one_parameter(name):
    # scripts/check_robustness.py reruns these with SEED replaced; every seed must derive from it
    script = _robustness_script()
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    at = script.parameters_cell(nb)
    later = "\n".join(c.source for c in nb.cells[at + 1:] if c.cell_type == "code")
    assert "SEED" in later, "the notebook never uses SEED"
    assert name in [n + ".ipynb" for n in script.DEFAULT_NOTEBOOKS]


def test_robustness_script_injects_the_seed_and_reports_every_failing_cell(tmp_path):
    script = _robustness_script()
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("SEED = 0")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), params,
                nbformat.v4.new_code_cell("x = SEED + 1\nassert x > 0\nassert x == 1, f'x = {x}'"),
                nbformat.v4.new_code_cell("import os\nassert os.environ['OMP_NUM_THREADS'] == '1'"),
                nbformat.v4.new_code_cell("y = undefined_name")]
    path = tmp_path / "t.ipynb"
    nbformat.write(nb, path)
    assert [c.source.split()[0] for c in script.with_seed(nb, 5).cells[1:3]] == ["SEED", "SEED"]
    held = script.run(path, 0, 1)
    assert held.failures == ["cell 4: NameError: name 'undefined_name' is not defined [y = undefined_name]"]
    failed = script.run(path, 5, 2)
    assert [line.split(":")[0] for line in failed.failures] == ["cell 2", "cell 3", "cell 4"]
    assert "x = 6" in failed.failures[0] and failed.failures[0].endswith("[assert x == 1, f'x = {x}']")
    with pytest.raises(ValueError, match="tagged 'parameters'"):
        script.parameters_cell(nbformat.v4.new_notebook())
