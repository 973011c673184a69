"""scripts/grade.py without a kernel: its grading of one exercise, on a toy namespace, and its files.

(tests/test_classroom.py runs it on every notebook, with right, wrong and gaming submissions.)
"""

import csv
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import grade  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="grade.py forks")

VALUE_CHECK = '''
import math
REFERENCE = 42

def check_exercise_1(answer):
    if answer is None:
        print("Exercise 1: not attempted yet")
        return
    assert type(answer) is int, "give an int"
    assert answer == math.floor(REFERENCE), "HINT: think again"
    print("Exercise 1: correct")
'''
FUNCTION_CHECK = '''
import math
TABLE = {"x": 1}

def check_exercise_2(double):
    if double(1) is NotImplemented:
        print("Exercise 2: not attempted yet")
        return
    for x in (1, 2, 5):
        assert type(double(x)) is int and double(x) == 2 * x * TABLE["x"], "HINT: twice x"
    print("Exercise 2: correct")
'''


def grade_one(source, n=1, timeout=10.0, tmp=None):
    namespace = {}
    exec(VALUE_CHECK if n == 1 else FUNCTION_CHECK, namespace)
    sources, results = tmp / "sources.json", tmp / "results.jsonl"
    sources.write_text(json.dumps({"s": source}))
    results.write_text("")
    if n == 1:
        grade.grade_exercise(namespace, 1, "answer", "None", False, str(sources), str(results), timeout)
    else:
        grade.grade_exercise(namespace, 2, "double", "NotImplemented", True, str(sources), str(results),
                             timeout)
    [row] = [json.loads(line) for line in results.read_text().splitlines()]
    assert namespace.get("answer") is None and "double" not in namespace  # the parent is untouched
    return row["status"], row["message"]


@pytest.mark.parametrize("source, status", [
    ("answer = 42\ncheck_exercise_1(answer)", "correct"),
    ("check_exercise_1(42)", "correct"),                       # the value passed to the check
    ("answer = 41\ncheck_exercise_1(answer)", "wrong"),
    ("answer = None\ncheck_exercise_1(answer)", "not attempted"),
    ("print('Exercise 1: correct')", "not attempted"),
    ("def check_exercise_1(a):\n    print('Exercise 1: correct')\nanswer = 41\ncheck_exercise_1(answer)", "wrong"),
    ("REFERENCE = 41\nanswer = 41", "wrong"),                  # the check reads its own names
    ("import math\nmath.floor = lambda x: 41\nanswer = 41", "wrong"),   # checked in a fresh process
    ("class A(int):\n    __eq__ = lambda s, o: True\n    __hash__ = int.__hash__\nanswer = A(1)", "wrong"),
    ("for answer in range(100):\n    try:\n        check_exercise_1(answer)\n        break\n"
     "    except AssertionError:\n        pass", "wrong"),     # the check cannot be asked
    ("import torch\nanswer = torch.tensor(42)", "correct"),   # a one-number tensor is its number
    ("import numpy\nanswer = numpy.int64(42)", "correct"),
    ("answer = 1 / 0", "error"),
    ("import os\nos._exit(0)", "error"),
    ("raise SystemExit", "error"),
])
def test_value_answers(source, status, tmp_path):
    assert grade_one(source, tmp=tmp_path)[0] == status


@pytest.mark.parametrize("source, status", [
    ("def double(x):\n    return 2 * x", "correct"),
    ("def double(x):\n    return NotImplemented", "not attempted"),
    ("def double(x):\n    return x + 1", "wrong"),
    ("def double(x):\n    return float(2 * x)", "wrong"),
    ("TABLE = {'x': 0}\ndef double(x):\n    return 0", "wrong"),          # rebinding a check's name
    ("import math\ndef double(x):\n    math.floor = abs\n    return 2 * x", "error"),   # patching
    ("class A(int):\n    __eq__ = lambda s, o: True\n    __hash__ = int.__hash__\n"
     "def double(x):\n    return A(1)", "wrong"),
    ("def double(x):\n    while True:\n        pass", "error"),             # timeout
    ("double = 4", "wrong"),
])
def test_function_answers(source, status, tmp_path):
    timeout = 0.5 if "while True" in source else 2.0  # the endless loop waits out its timeout
    assert grade_one(source, n=2, timeout=timeout, tmp=tmp_path)[0] == status


def test_a_wrong_answer_gets_the_checks_hint(tmp_path):
    assert grade_one("answer = 41", tmp=tmp_path) == ("wrong", "HINT: think again")


def test_answer_cells_are_found_by_id_then_by_tag_then_by_call():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("check_exercise_1(x)  # scratch"),
                nbformat.v4.new_code_cell("answer = 1\ncheck_exercise_1(answer)", metadata={"tags": ["answer"]}),
                nbformat.v4.new_code_cell("answer = 2\ncheck_exercise_1(answer)")]
    nb.cells[2].id = "the-id"
    assert grade.find_answer_source(nb, "the-id", 1).startswith("answer = 2")
    assert grade.find_answer_source(nb, "other", 1).startswith("answer = 1")
    del nb.cells[1]
    assert grade.find_answer_source(nb, "other", 1).startswith("answer = 2")
    assert grade.find_answer_source(nb, "other", 2) is None


def test_collect_names_students_by_folder_or_file_name(tmp_path):
    teachers = [Path("notebooks/01_introduction.ipynb"), Path("notebooks/02_mathematical_formulation.ipynb")]
    for name in ["alice/01_introduction.ipynb", "bob_01_introduction.ipynb",
                 "02_mathematical_formulation-carol.ipynb", "notes.ipynb"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("{}")
    found = grade.collect(tmp_path, teachers)
    assert {t.name: sorted(s) for t, s in found.items()} == {
        "01_introduction.ipynb": ["alice", "bob"], "02_mathematical_formulation.ipynb": ["carol"]}


def test_csv_and_feedback(tmp_path):
    t1, t2 = Path("01_introduction.ipynb"), Path("02_mathematical_formulation.ipynb")
    verdict = lambda status, message="": {"status": status, "message": message, "review": []}  # noqa: E731
    grades = {t1: {"alice": {1: verdict("correct"), 2: verdict("wrong", "HINT: x")},
                   "bob": {1: {**verdict("correct"), "review": ["__eq__"]}, 2: verdict("error", "boom")}},
              t2: {"alice": {1: verdict("not attempted")}}}
    numbers = {t1: [1, 2], t2: [1]}
    grade.write_csv(tmp_path / "g.csv", grades, numbers)
    rows = list(csv.reader(open(tmp_path / "g.csv")))
    assert rows == [["student", "01.1", "01.2", "01 total", "02.1", "02 total", "review"],
                    ["alice", "1", "0", "1", "0", "0", ""],
                    ["bob", "1", "0", "1", "", "", "01.1"]]
    text = grade.feedback_text("alice", grades, numbers)
    assert "01_introduction.ipynb: 1 of 2 correct" in text and "Exercise 2: wrong - HINT: x" in text


def test_review_flags_code_not_comments():
    assert grade.suspicious("model.eval()  # inspect the globals\nx = 'builtins'") == []
    assert grade.suspicious("import builtins\nbuiltins.print = None") == ["builtins"]
    assert grade.suspicious("y = eval('1')\nclass A:\n    def __eq__(s, o): return True") == ["__eq__", "eval"]
