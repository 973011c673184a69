"""The README's promises: its code example runs, and its commands name files that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_api_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "the README has a python example"
    exec(compile(blocks[0], "README.md", "exec"), {})
    assert capsys.readouterr().out.startswith("trainable params: ")


def test_notebook_table_lists_every_notebook():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert f"notebooks/{path.name}" in README, path.name


def test_referenced_scripts_exist():
    for rel in re.findall(r"(?:scripts|benchmarks)/[\w./]+\.py", README):
        assert (ROOT / rel).exists(), rel
