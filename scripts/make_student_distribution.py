"""Write what students receive: the package as a wheel, the student notebooks, and how to install.

Usage (from the repository root, inside the project's virtual environment):

    python scripts/make_student_distribution.py OUT/

OUT/ then holds exactly:

- `lora_helpers-<version>-py3-none-any.whl`: the package, built by `pip wheel --no-deps .`
  (pip is already in every environment; `python -m build` would add a dependency for the same
  wheel). pip builds it in an isolated environment with the `setuptools>=68` that
  `pyproject.toml` asks for, fetched from your package index the first time.
- `notebooks/*.ipynb`: the student edition (`make_student_notebooks.py`: no solutions, no
  outputs, timing asserts turned into printed warnings);
- `requirements.txt`: `requirements.txt` of the repository without `-e .` (the wheel instead)
  and without the test tools (pytest, nbval, pytest-xdist, hypothesis), which students do not
  need;
- `README.md`: install and start, for students.

No solution, no TEACHING.md, no tests, no scripts: hand the folder (or a zip of it) to the class.
`tests/test_student_distribution.py` builds it, installs the wheel in a fresh virtual environment
and runs a student notebook with it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from make_student_notebooks import write_student_notebooks  # noqa: E402

# Only the test suite needs these; a requirement line naming one is left out of the students' file.
TEST_ONLY = {"nbval", "pytest", "pytest-xdist", "hypothesis"}

STUDENT_README = """\
# LoRA from first principles — student notebooks

Notebooks that teach LoRA (Low-Rank Adaptation; Hu et al. 2021, arXiv:2106.09685) on a laptop
CPU, and `lora_helpers`, the small package they import (the `.whl` file in this folder).

## Install (once, before the class)

You need Python 3.10 or newer. In this folder:

Linux:

```bash
python3 -m venv .venv
.venv/bin/pip install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.txt
.venv/bin/jupyter lab notebooks/
```

(The extra index gives the CPU-only build of torch; without it Linux gets a build with several
GB of GPU libraries that these notebooks do not use.)

macOS:

```bash
python3 -m venv .venv
.venv/bin/pip install -r requirements.txt
.venv/bin/jupyter lab notebooks/
```

Windows (PowerShell or cmd):

```
py -m venv .venv
.venv\\Scripts\\pip install -r requirements.txt
.venv\\Scripts\\jupyter lab notebooks/
```

If your teacher gave you a `wheelhouse` folder (for a room without a good network), add
`--no-index --find-links wheelhouse` to the `pip install` line instead of the extra index.

## Working through a notebook

Run the cells from top to bottom (Run → Run All Cells works). Each exercise has a check
function and an answer cell: write your answer in the answer cell and run it. The check prints
`Exercise N: correct`, or stops with a hint (never the answer). Unanswered exercises print
`not attempted yet` and do not stop the notebook. A cell that measures time prints a warning if
your laptop was too busy to confirm a timing claim; that is not an error.

Start with `01_introduction.ipynb`; each notebook says at its top which ones it builds on.
"""


def build_wheel(dest: Path) -> Path:
    """Build `lora_helpers` as a wheel into `dest` with pip; return the wheel's path.

    The source tree is copied to a temporary folder first, so the build leaves no `build/` or
    `*.egg-info` in the repository.
    """
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):     # what setuptools reads
            shutil.copy2(ROOT / name, src / name)
        shutil.copytree(ROOT / "lora_helpers", src / "lora_helpers",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        before = set(dest.glob("*.whl"))
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                        "--wheel-dir", str(dest), str(src)], check=True)
        built = sorted(set(dest.glob("lora_helpers-*.whl")) - before)
    if len(built) != 1:
        raise RuntimeError(f"expected one lora_helpers wheel in {dest}, found {built}")
    return built[0]


def student_requirements(wheel_name: str) -> str:
    """The repository's requirements.txt for students: the wheel for `-e .`, no test tools."""
    out, pending_comments = [], []
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            pending_comments.append(line)
            continue
        name = re.split(r"[\s=<>!~;\[]", stripped, maxsplit=1)[0].lower()
        if stripped.startswith("-e") or name in TEST_ONLY:
            pending_comments = []          # a comment about a dropped line goes with it
            continue
        out.extend(pending_comments)
        pending_comments = []
        out.append(line)
    out.append("# The package the notebooks import, built from the course's repository.")
    out.append(f"./{wheel_name}")
    return "\n".join(out) + "\n"


def make_distribution(out: Path) -> list[Path]:
    """Write the student distribution into `out` (which must be empty or absent)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; choose a new folder so nothing else is handed out")
    if out.resolve() == ROOT.resolve():
        raise ValueError("OUT is the repository itself; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    wheel = build_wheel(out)
    notebooks = write_student_notebooks(out / "notebooks")
    (out / "requirements.txt").write_text(student_requirements(wheel.name), encoding="utf-8")
    (out / "README.md").write_text(STUDENT_README, encoding="utf-8")
    return [wheel, out / "requirements.txt", out / "README.md", *notebooks]


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in {"-h", "--help"}:
        print(__doc__.strip())
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    for path in make_distribution(Path(argv[0])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
