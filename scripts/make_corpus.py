"""Write the pinned text corpora in ``lora_helpers/corpus/`` (run once; the output is committed).

The two corpora of notebook 07 come from Python itself, so nothing is downloaded:

- ``python_docs.txt``: English prose, a fixed list of topics of the reference documentation as
  ``pydoc`` ships it (``pydoc_data.topics``), in the order listed below;
- ``python_stdlib.txt``: Python source, a fixed list of pure-Python standard-library modules.

Both texts change between Python releases, so the files are *pinned*: they were written once
with CPython 3.11.7 and are read from the package, never regenerated at run time; every Python
version then sees the same characters. Re-running this script under another Python version
gives different text (it refuses to run under anything but 3.11.x unless ``--force``).

The text is normalised to printable ASCII plus newline: typographic quotes and dashes become
their ASCII forms, tabs become four spaces, and anything else outside ASCII is an error (the
script lists it). That keeps the character vocabulary small and the same for both corpora.

Usage (from the repository root): ``python scripts/make_corpus.py``
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "lora_helpers" / "corpus"

DOC_TOPICS = [
    "assert", "assignment", "augassign", "binary", "booleans", "break", "calls", "class",
    "comparisons", "context-managers", "continue", "del", "dict", "exceptions", "execmodel",
    "for", "function", "global", "identifiers", "if", "import", "in", "lambda", "lists",
    "naming", "nonlocal", "numeric-types", "objects", "pass", "raise", "return",
    "sequence-types", "slicings", "strings", "truth", "try", "typesmapping", "typesseq",
    "while", "with", "yield",
]
STDLIB_MODULES = [
    "bisect", "colorsys", "copy", "fnmatch", "fractions", "glob", "graphlib", "heapq",
    "numbers", "operator", "pprint", "queue", "reprlib", "sched", "string", "textwrap",
]
ASCII_FORMS = {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2026": "...",
               "\u2014": "--", "\u2013": "-", "\t": "    ", "\u00df": "ss", "\u00b0": " degrees",
               "\u00b1": "+/-", "\u00e7": "c"}


def normalise(text: str, where: str) -> str:
    """Map typographic characters to ASCII; refuse anything else outside printable ASCII."""
    text = "".join(ASCII_FORMS.get(ch, ch) for ch in text)
    bad = sorted({ch for ch in text if not (" " <= ch <= "~" or ch == "\n")})
    if bad:
        raise SystemExit(f"{where}: characters outside printable ASCII {bad!r}; "
                         "add them to ASCII_FORMS")
    return text


def docs_text() -> str:
    from pydoc_data.topics import topics
    parts = [normalise(topics[name].strip("\n"), f"topic {name!r}") for name in DOC_TOPICS]
    return "\n\n\n".join(parts) + "\n"


def stdlib_text() -> str:
    parts = []
    for name in STDLIB_MODULES:
        origin = importlib.util.find_spec(name).origin
        source = Path(origin).read_text(encoding="utf-8").strip("\n")
        parts.append(f"# ===== {name}.py =====\n" + normalise(source, f"module {name!r}"))
    return "\n\n\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="run under a Python other than 3.11")
    args = parser.parse_args()
    if sys.version_info[:2] != (3, 11) and not args.force:
        raise SystemExit(f"the committed corpus was written with Python 3.11.7, this is "
                         f"{sys.version.split()[0]}; pass --force to write a different corpus")
    OUT.mkdir(exist_ok=True)
    for filename, text in [("python_docs.txt", docs_text()), ("python_stdlib.txt", stdlib_text())]:
        (OUT / filename).write_text(text, encoding="ascii", newline="\n")
        print(f"{filename}: {len(text):,} characters, {len(set(text))} distinct")


if __name__ == "__main__":
    main()
