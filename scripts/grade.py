"""Grade students' notebooks with the teacher's checks, by running each teacher notebook once.

Usage (from the repository root, inside the project's virtual environment; Linux or macOS):

    python scripts/grade.py SUBMISSIONS_DIR [--out grades.csv] [--feedback feedback/]
                            [--timeout 120] [--notebooks notebooks/02_*.ipynb ...]

SUBMISSIONS_DIR holds the students' notebooks, either one folder per student
(`alice/02_mathematical_formulation.ipynb`) or flat files whose name contains the notebook's
name (`alice_02_mathematical_formulation.ipynb`, `02_mathematical_formulation-bob.ipynb`).
The student is the folder's name, or the file name without the notebook's name.

How it grades (see TEACHING.md, "Grading"):

1. For each teacher notebook that has submissions, it builds the student edition
   (scripts/make_student_notebooks.py) and runs it ONCE in a fresh kernel. Every cell comes
   from the teacher's copy: whatever a student changed outside an answer cell (a check, the
   data, a helper) does not count.
2. Right before each `answer` cell, for every submission, it forks the kernel (so each student
   starts from the same state and nothing a student does reaches another student or the rest
   of the run), executes the submission's answer cell (the cell with the same id, else the one
   tagged `answer` that calls the check) with the check replaced by a silent stand-in, and then
   calls the TEACHER's `check_exercise_N`, taken before the student's code ran and bound to
   the namespace as it was then, on the student's answer: the name the answer cell passes to
   the check (`answer`, `max_rank`, ...). A value answer is rebuilt from plain Python values
   (a one-number tensor or numpy scalar becomes its number; an object made to equal anything is
   refused) and checked in a second fork that no student code ran in, so nothing the answer
   cell rebinds, patches or mutates can reach the check; a function answer is called by the
   check, in the process that defined it, and every value it returns is inspected.
3. correct = the teacher's check returned without an exception, the answer was not the unanswered
   stub (None, or NotImplemented where the answer cell says so) and no call of the student's
   function returned it, and no attribute of builtins, math, copy, numpy, torch or lora_helpers
   was replaced. wrong = the check raised an AssertionError (its message, the hint, goes to the
   feedback). error = anything else (an exception in the student's code, a timeout, a crash).
   Printed text is never read.
4. The unanswered answer cell then runs, and the notebook goes on.

Output: a CSV with one row per student, one column per exercise (`02.1`: 1 or 0) and one per
notebook total (`02 total`), plus `review`: exercises whose answer cell uses something an
honest answer rarely needs (builtins, `globals()`, `sys.modules`, `setattr`, `__eq__`,
`inspect`, `gc`, ...): read those few by hand. And one feedback text per student with every
exercise's status and hint.
"""

from __future__ import annotations

import argparse
import ast
import copy as _copy_module
import csv
import io
import json
import os
import re
import select
import signal
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent
PROMPT = re.compile(r"^### Exercise (\d+)\b", flags=re.M)
DEFAULT_TIMEOUT = 120  # seconds per answer: the student's code and the check together
KERNEL_TIMEOUT = 600   # seconds per cell of the teacher's notebook (a grading cell runs many answers)
STATUSES = ("correct", "wrong", "error", "not attempted", "missing")

# What an honest answer cell rarely needs; a hit puts the exercise in the `review` column.
SUSPICIOUS_NAMES = {"builtins", "globals", "locals", "vars", "setattr", "delattr", "__eq__", "__ne__",
                    "__hash__", "__class__", "__code__", "__globals__", "__dict__", "__subclasses__",
                    "__builtins__", "__import__", "inspect", "gc", "ctypes", "_exit", "fork", "kill",
                    "signal", "settrace", "setprofile", "importlib", "modules", "stdout", "stderr",
                    "write", "dup2", "fdopen", "pipe", "_getframe", "f_back", "f_globals"}
SUSPICIOUS_CALLS = {"eval", "exec", "compile"}  # as functions, not methods (model.eval() is fine)


def suspicious(source: str) -> list[str]:
    """The names in an answer cell's code (not its comments or strings) that the `review`
    column reports."""
    import tokenize
    hits, previous = set(), None
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return ["does not tokenize"]
    for i, token in enumerate(tokens):
        if token.type == tokenize.NAME:
            following = tokens[i + 1].string if i + 1 < len(tokens) else ""
            if token.string in SUSPICIOUS_NAMES:
                hits.add(token.string)
            elif token.string in SUSPICIOUS_CALLS and previous != "." and following == "(":
                hits.add(token.string)
        if token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT):
            previous = token.string
    return sorted(hits)


# ---------------------------------------------------------------------------------------------
# Reading notebooks (teacher and students)
# ---------------------------------------------------------------------------------------------

def _tags(cell) -> list:
    return cell.get("metadata", {}).get("tags", [])


def exercise_cells(nb) -> dict[int, dict]:
    """{N: {"check": index, "answer": index}} of a notebook that follows the exercise convention.

    An exercise's cells run from its `### Exercise N` prompt to the next prompt or `#`/`##`
    heading; its check cell defines `check_exercise_N`, its answer cell is tagged `answer`.
    """
    found, current = {}, None
    for i, cell in enumerate(nb.cells):
        match = PROMPT.search(cell.source) if cell.cell_type == "markdown" else None
        if match:
            current = int(match.group(1))
            found[current] = {"check": None, "answer": None}
            continue
        if cell.cell_type == "markdown" and re.match(r"#{1,2} ", cell.source):
            current = None
        if current is None or cell.cell_type != "code":
            continue
        if "answer" in _tags(cell) and found[current]["answer"] is None:
            found[current]["answer"] = i
        elif re.search(rf"^def check_exercise_{current}\(", cell.source, flags=re.M):
            found[current]["check"] = i
    return found


def answer_spec(source: str, n: int) -> tuple[str, str]:
    """(name, sentinel) of an unanswered answer cell: the name it passes to `check_exercise_N`,
    and the stub's value, "None" or "NotImplemented" (a function whose right answer returns None)."""
    call = re.search(rf"check_exercise_{n}\((\w+)\)", source)
    if not call:
        raise ValueError(f"the answer cell of Exercise {n} does not call check_exercise_{n}(NAME)")
    sentinel = "NotImplemented" if re.search(r"\breturn NotImplemented\b", source) else "None"
    return call.group(1), sentinel


def find_answer_source(submission, cell_id: str | None, n: int) -> str | None:
    """The source of a submission's answer cell for Exercise N, or None if it has none.

    First the cell with the student edition's id; else the cell tagged `answer` that calls
    `check_exercise_N(`; else the last code cell that calls it (and does not define it)."""
    code = [c for c in submission.cells if c.cell_type == "code"]
    for cell in code:
        if cell_id is not None and cell.get("id") == cell_id:
            return cell.source
    calls = [c for c in code if re.search(rf"\bcheck_exercise_{n}\(", c.source)
             and not re.search(rf"^def check_exercise_{n}\(", c.source, flags=re.M)]
    tagged = [c for c in calls if "answer" in _tags(c)]
    if tagged:
        return tagged[0].source
    return calls[-1].source if calls else None


def _normalise(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


# ---------------------------------------------------------------------------------------------
# Inside the kernel: grade one exercise for every submission
# ---------------------------------------------------------------------------------------------

_WATCHED_MODULES = ("builtins", "math", "copy", "numpy", "torch", "torch.nn", "torch.nn.functional",
                    "torch.linalg", "lora_helpers")


def _module_state() -> dict:
    """Identity of every attribute of the modules a check relies on (and of torch.Tensor's and
    nn.Module's methods), to detect an answer that replaces one."""
    state = {}
    names = [m for m in sys.modules if m in _WATCHED_MODULES or m.startswith("lora_helpers.")]
    for name in names:
        module = sys.modules.get(name)
        if module is not None:
            state[name] = {k: id(v) for k, v in list(vars(module).items())}
    torch = sys.modules.get("torch")
    if torch is not None:
        state["torch.Tensor"] = {k: id(v) for k, v in list(vars(torch.Tensor).items())}
        state["torch.nn.Module"] = {k: id(v) for k, v in list(vars(torch.nn.Module).items())}
    return state


def _changed(before: dict, after: dict) -> list[str]:
    out = []
    for module, attrs in before.items():
        now = after.get(module, {})
        out += [f"{module}.{k}" for k, v in attrs.items() if now.get(k) != v]
    return out


class _Timeout(BaseException):
    """Raised by the alarm; a BaseException, so `except Exception` in an answer cannot swallow it."""


def _alarm(signum, frame):
    raise _Timeout()


def _run_answer(namespace: dict, source: str, n: int, name: str, sentinel, function: bool,
                timeout: float) -> dict:
    """In a forked child: run one answer cell. A value answer goes back to the parent as a
    literal ({"literal": repr}), to be checked in a fresh child that no student code touched; a
    function answer is checked here, by the teacher's check (see `_check_function`)."""
    check = namespace[f"check_exercise_{n}"]
    pristine = dict(namespace)                       # the names as they were before the answer
    captured = []

    def stand_in(*args, **kwargs):  # the answer cell's call: records, checks nothing, prints nothing
        captured.append(args[0] if args else kwargs.get(name))

    namespace[f"check_exercise_{n}"] = stand_in
    before = _module_state()
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        try:
            exec(compile(_python_source(source), f"<answer to exercise {n}>", "exec"), namespace)
        except _Timeout:
            return {"status": "error", "message": f"the answer cell ran longer than {timeout:g} s"}
        except BaseException as exc:  # noqa: BLE001 - any failure of the student's code
            return {"status": "error", "message": f"the answer cell raised {_describe(exc)}"}
        answer = namespace.get(name, sentinel)
        if answer is sentinel and captured and captured[-1] is not sentinel:
            answer = captured[-1]                    # e.g. check_exercise_1(42) without `answer =`
        if answer is sentinel:
            return {"status": "not attempted", "message": ""}
        if not function:
            try:
                return {"literal": repr(_plain_copy(answer))}
            except TypeError as exc:
                return {"status": "wrong", "message": (
                    f"the answer must be a plain Python value (int, float, str, tuple, set, dict): {exc}")}
        if not callable(answer):
            return {"status": "wrong", "message": f"{name} must be a function, got a {type(answer).__name__}"}
        return _check_function(check, pristine, answer, sentinel, before, timeout)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _check_function(check, pristine: dict, function, sentinel, before: dict, timeout: float) -> dict:
    """The teacher's check on a student's function, in the child that defined it. The check is
    rebound to the notebook's names as they were before the answer cell ran; every value the
    function returns is inspected; replaced attributes of the watched modules make it an error."""
    teacher_check = types.FunctionType(check.__code__, pristine, check.__name__,
                                       check.__defaults__, check.__closure__)
    returned_stub = []

    def wrapper(*args, **kwargs):
        value = function(*args, **kwargs)
        if value is sentinel:
            returned_stub.append(True)
        odd = _not_plain(value, pristine)
        if odd:
            raise _Gamed(f"your function returned {odd}; return plain values "
                         "(int, float, str, tuple, torch.Tensor, ...)")
        return value

    verdict = _call_check(teacher_check, wrapper, timeout)
    changed = _changed(before, _module_state())
    if changed:
        return {"status": "error", "message": "the answer replaced " + ", ".join(changed[:5])}
    if verdict["status"] == "correct" and returned_stub:
        return {"status": "not attempted", "message": ""}
    return verdict


def _call_check(check, answer, timeout: float) -> dict:
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        check(answer)
    except _Timeout:
        return {"status": "error", "message": f"the check ran longer than {timeout:g} s"}
    except _Gamed as exc:
        return {"status": "wrong", "message": str(exc)}
    except AssertionError as exc:
        return {"status": "wrong", "message": str(exc) or "(the check's assert has no hint)"}
    except BaseException as exc:                     # noqa: BLE001
        return {"status": "error", "message": f"the check raised {_describe(exc)}"}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return {"status": "correct", "message": ""}


def _check_value(namespace: dict, n: int, value, sentinel, timeout: float) -> dict:
    """In a fresh forked child (no student code ran in it): the teacher's check on a value."""
    if value is sentinel:
        return {"status": "not attempted", "message": ""}
    return _call_check(namespace[f"check_exercise_{n}"], value, timeout)


def _plain_copy(value, depth: int = 0):
    """`value` rebuilt from plain Python values (what `ast.literal_eval` can read back): a
    one-number torch tensor or numpy scalar becomes its Python number; anything else that is not
    exactly a built-in type (an int subclass that equals everything, say) raises TypeError."""
    kind = type(value)
    if kind in (int, float, str, bool, type(None)):
        if kind is float and value != value or value in (float("inf"), float("-inf")):
            raise TypeError("nan and inf cannot be graded")
        return value
    if depth < 3 and kind in (tuple, list, set, frozenset):
        return kind(_plain_copy(v, depth + 1) for v in value)
    if depth < 3 and kind is dict:
        return {_plain_copy(k, depth + 1): _plain_copy(v, depth + 1) for k, v in value.items()}
    torch = sys.modules.get("torch")
    if torch is not None and kind is torch.Tensor and value.dim() == 0:
        return _plain_copy(value.item(), depth + 1)
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.generic) and kind.__module__ == "numpy":
        return _plain_copy(value.item(), depth + 1)
    raise TypeError(f"got a {kind.__name__}")


class _Gamed(BaseException):
    """A function answer returned an object made to fool comparisons (not caught by a check)."""


_PLAIN = (int, float, complex, str, bytes, bool, type(None), type(NotImplemented))


def _not_plain(value, pristine: dict, depth: int = 0) -> str:
    """'' for an honest return value; else what is odd about it: a subclass of a built-in
    scalar or of torch.Tensor, or an instance of a class the answer cell defined."""
    kind = type(value)
    if kind in _PLAIN:
        return ""
    if isinstance(value, _PLAIN[:-2]) and getattr(kind, "__module__", "") != "numpy":
        return f"a {kind.__name__} (a subclass of {kind.__mro__[1].__name__})"
    if kind in (tuple, list, set, frozenset) and depth < 2:
        return next((odd for v in value if (odd := _not_plain(v, pristine, depth + 1))), "")
    if kind is dict and depth < 2:
        items = [*value.keys(), *value.values()]
        return next((odd for v in items if (odd := _not_plain(v, pristine, depth + 1))), "")
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        ok = kind is torch.Tensor or kind is torch.nn.Parameter
        return "" if ok else f"a {kind.__name__} (a subclass of torch.Tensor)"
    module = getattr(kind, "__module__", "")
    if module == "__main__" and pristine.get(kind.__name__) is not kind:
        return f"a {kind.__name__}, a class defined in the answer cell"
    return ""


def _python_source(source: str) -> str:
    """The answer cell as plain Python (IPython magics such as %time become function calls)."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:
        return source
    return TransformerManager().transform_cell(source)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def grade_exercise(namespace: dict, n: int, name: str, sentinel: str, function: bool,
                   sources_file: str, results_file: str, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Called by the cell that grade.py inserts before Exercise N's answer cell.

    For each submission in `sources_file` (JSON {student: answer-cell source or null}), forks,
    runs `_run_answer` in the child (and `_check_value` in a second one) and appends {student, exercise, status, message} to
    `results_file` (JSON lines). The kernel's own state is never touched by a student's code.
    `function`: the exercise asks for a function (its stub is a `def`), else for a value."""
    stub = {"None": None, "NotImplemented": NotImplemented}[sentinel]
    sources = json.loads(Path(sources_file).read_text(encoding="utf-8"))
    results = []
    for student, source in sources.items():
        start = time.monotonic()
        if source is None:
            verdict = {"status": "missing", "message": f"no answer cell for Exercise {n} found"}
        elif source == "":
            verdict = {"status": "not attempted", "message": ""}
        else:
            verdict = _in_child(lambda: _run_answer(namespace, source, n, name, stub, function,
                                                            timeout),
                                timeout + 30)
            if "literal" in verdict:
                value = ast.literal_eval(verdict["literal"])
                verdict = _in_child(lambda: _check_value(namespace, n, value, stub, timeout),
                                    timeout + 30)
        results.append({"student": student, "exercise": n, **verdict,
                        "seconds": round(time.monotonic() - start, 2)})
    with open(results_file, "a", encoding="utf-8") as f:
        for row in results:
            f.write(json.dumps(row) + "\n")


def _in_child(work, limit: float) -> dict:
    """Run `work()` in a forked child; its JSON-able dict comes back through a pipe."""
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    import warnings
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a multi-threaded process (the kernel's IO threads) may
        # deadlock; the child touches none of those threads' locks and ends with os._exit.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:                                     # the child
        status = 1
        try:
            os.close(read_end)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            sys.stdout = sys.stderr = io.StringIO()  # what the student prints is never read
            try:
                verdict = work()
            except BaseException as exc:             # noqa: BLE001
                verdict = {"status": "error", "message": f"the grader failed: {_describe(exc)}"}
            os.write(write_end, json.dumps(verdict).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    chunks, deadline, verdict = [], time.monotonic() + limit, None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            verdict = {"status": "error", "message": f"no result after {limit:g} s (killed)"}
            break
        ready, _, _ = select.select([read_end], [], [], min(left, 1.0))
        if ready:
            chunk = os.read(read_end, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    os.close(read_end)
    _, code = os.waitpid(pid, 0)
    if verdict is None:
        try:
            verdict = json.loads(b"".join(chunks).decode())
        except ValueError:
            verdict = {"status": "error", "message": f"the answer ended the process (status {code})"}
    return verdict


# ---------------------------------------------------------------------------------------------
# Outside the kernel: build the grading run of one teacher notebook
# ---------------------------------------------------------------------------------------------

def grading_notebook(teacher_path: Path, submissions: dict, workdir: Path,
                     timeout: float = DEFAULT_TIMEOUT):
    """The student edition of `teacher_path` with a grading cell before each answer cell.

    `submissions` maps a student's name to their notebook (nbformat). Returns the notebook, the
    results file it will write, {N: answer cell index in the returned notebook} and
    {(student, N): review reasons}."""
    import nbformat
    sys.path.insert(0, str(SCRIPTS))
    from make_student_notebooks import student_notebook

    student = student_notebook(teacher_path)
    found = exercise_cells(student)
    workdir.mkdir(parents=True, exist_ok=True)
    results_file = workdir / "results.jsonl"
    results_file.write_text("", encoding="utf-8")
    by_id, review = {}, {}
    for n, entry in found.items():
        if entry["answer"] is None or entry["check"] is None:
            raise ValueError(f"{teacher_path.name}: Exercise {n} has no check or answer cell")
        cell = student.cells[entry["answer"]]
        name, sentinel = answer_spec(cell.source, n)
        function = bool(re.search(rf"^def {name}\(", cell.source, flags=re.M))
        sources = {}
        for who, nb in submissions.items():
            source = find_answer_source(nb, cell.get("id"), n)
            if source is not None and _normalise(source) == _normalise(cell.source):
                source = ""  # the unanswered stub, unchanged: "not attempted", nothing to run
            sources[who] = source
            if source is not None:
                hits = suspicious(_python_source(source))
                redefined = re.search(rf"^\s*(def\s+check_exercise_{n}\b|check_exercise_{n}\s*=)",
                                      source, flags=re.M)
                if redefined:
                    hits.append(f"redefines check_exercise_{n}")
                if re.search(r"Exercise \d+: correct", source):
                    hits.append("prints 'correct'")
                if hits:
                    review[who, n] = hits
        sources_file = workdir / f"exercise_{n}.json"
        sources_file.write_text(json.dumps(sources), encoding="utf-8")
        by_id[cell.get("id")] = (n, name, sentinel, function, sources_file)
    cells, answer_index = [], {}
    cells.append(nbformat.v4.new_code_cell(
        f"import sys as _grader_sys\n_grader_sys.path.insert(0, {str(SCRIPTS)!r})\n"
        "import grade as _grader\ndel _grader_sys"))
    for cell in student.cells:
        if cell.get("id") in by_id:
            n, name, sentinel, function, sources_file = by_id[cell.get("id")]
            cells.append(nbformat.v4.new_code_cell(
                f"_grader.grade_exercise(globals(), {n}, {name!r}, {sentinel!r}, {function}, "
                f"{str(sources_file)!r}, {str(results_file)!r}, timeout={timeout!r})"))
            answer_index[n] = len(cells)
        cells.append(cell)
    student.cells = cells
    return student, results_file, answer_index, review


def grade_notebook(teacher_path: Path, submissions: dict, workdir: Path,
                   timeout: float = DEFAULT_TIMEOUT, kernel_timeout: float = KERNEL_TIMEOUT):
    """Run the teacher's notebook once and grade every submission of it.

    Returns ({student: {N: {"status", "message", "review"}}}, the executed grading notebook).
    Raises if the teacher's notebook itself fails (an error outside `raises-exception` cells)."""
    from nbclient import NotebookClient

    nb, results_file, answer_index, review = grading_notebook(teacher_path, submissions, workdir,
                                                              timeout)
    run_dir = workdir / "run"
    run_dir.mkdir(exist_ok=True)
    NotebookClient(nb, timeout=kernel_timeout, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(run_dir)}}).execute()
    grades = {who: {} for who in submissions}
    for line in results_file.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        grades[row["student"]][row["exercise"]] = {
            "status": row["status"], "message": row["message"], "seconds": row["seconds"],
            "review": review.get((row["student"], row["exercise"]), [])}
    for who in grades:
        for n in answer_index:
            grades[who].setdefault(n, {"status": "error", "message": "not graded", "review": []})
    return grades, nb


# ---------------------------------------------------------------------------------------------
# Command line: find the submissions, grade, write the CSV and the feedback
# ---------------------------------------------------------------------------------------------

def collect(submissions_dir: Path, teachers: list[Path]) -> dict[Path, dict[str, Path]]:
    """{teacher notebook: {student: submission path}}. A file belongs to the teacher notebook
    whose name (without .ipynb) it contains; the student is its folder under SUBMISSIONS_DIR,
    or the file name without the notebook's name."""
    found: dict[Path, dict[str, Path]] = {t: {} for t in teachers}
    for path in sorted(submissions_dir.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in path.parts:
            continue
        matches = [t for t in teachers if t.stem in path.name]
        if len(matches) != 1:
            print(f"skipped {path}: its name contains no (or more than one) notebook name",
                  file=sys.stderr)
            continue
        teacher = matches[0]
        relative = path.relative_to(submissions_dir)
        if len(relative.parts) > 1:
            who = relative.parts[0]
        else:
            who = path.stem.replace(teacher.stem, "").strip(" _-.") or path.stem
        if who in found[teacher]:
            raise SystemExit(f"two submissions of {teacher.name} for {who!r}: {found[teacher][who]}, {path}")
        found[teacher][who] = path
    return {t: s for t, s in found.items() if s}


def notebook_label(teacher: Path) -> str:
    return teacher.stem.split("_", 1)[0]


def write_csv(out: Path, grades: dict[Path, dict], exercise_numbers: dict[Path, list[int]]) -> None:
    students = sorted({who for per in grades.values() for who in per})
    header, rows = ["student"], []
    for teacher, numbers in exercise_numbers.items():
        label = notebook_label(teacher)
        header += [f"{label}.{n}" for n in numbers] + [f"{label} total"]
    header.append("review")
    for who in students:
        row, flagged = [who], []
        for teacher, numbers in exercise_numbers.items():
            per = grades[teacher].get(who)
            if per is None:
                row += [""] * (len(numbers) + 1)
                continue
            scores = [int(per[n]["status"] == "correct") for n in numbers]
            row += scores + [sum(scores)]
            flagged += [f"{notebook_label(teacher)}.{n}" for n in numbers if per[n]["review"]]
        row.append(" ".join(flagged))
        rows.append(row)
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def feedback_text(who: str, grades: dict[Path, dict], exercise_numbers: dict[Path, list[int]]) -> str:
    lines = [f"Feedback for {who}", ""]
    for teacher, numbers in exercise_numbers.items():
        per = grades[teacher].get(who)
        if per is None:
            continue
        total = sum(per[n]["status"] == "correct" for n in numbers)
        lines.append(f"{teacher.name}: {total} of {len(numbers)} correct")
        for n in numbers:
            verdict = per[n]
            line = f"  Exercise {n}: {verdict['status']}"
            if verdict["message"]:
                line += f" - {verdict['message']}"
            lines.append(line)
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("submissions", type=Path)
    parser.add_argument("--out", type=Path, default=Path("grades.csv"))
    parser.add_argument("--feedback", type=Path, default=Path("feedback"),
                        help="folder for one feedback text per student")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds per answer (the student's code and the check)")
    parser.add_argument("--notebooks", type=Path, nargs="*",
                        default=sorted((ROOT / "notebooks").glob("*.ipynb")),
                        help="the teacher's notebooks (default: all of notebooks/)")
    args = parser.parse_args(argv)
    if not hasattr(os, "fork"):
        raise SystemExit("grade.py needs os.fork (Linux or macOS; on Windows use WSL)")
    # The kernel inherits these: one BLAS/OpenMP thread (as the tests run the notebooks; a forked
    # child must not inherit a thread pool), no progress bars, no downloads.
    os.environ.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                       "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    import nbformat
    teachers = [p.resolve() for p in args.notebooks]
    collected = collect(args.submissions, teachers)
    if not collected:
        raise SystemExit(f"no submission in {args.submissions} matches a notebook's name")
    grades, numbers = {}, {}
    with tempfile.TemporaryDirectory(prefix="grade-") as tmp:
        for teacher, paths in collected.items():
            start = time.monotonic()
            submissions = {who: nbformat.read(p, as_version=4) for who, p in paths.items()}
            grades[teacher], _ = grade_notebook(teacher, submissions, Path(tmp) / teacher.stem,
                                                args.timeout)
            numbers[teacher] = sorted(next(iter(grades[teacher].values())))
            print(f"{teacher.name}: {len(paths)} submissions graded in "
                  f"{time.monotonic() - start:.0f} s")
    write_csv(args.out, grades, numbers)
    args.feedback.mkdir(parents=True, exist_ok=True)
    students = sorted({who for per in grades.values() for who in per})
    for who in students:
        safe = re.sub(r"[^\w.-]", "_", who)
        (args.feedback / f"{safe}.txt").write_text(feedback_text(who, grades, numbers),
                                                    encoding="utf-8")
    print(f"wrote {args.out} ({len(students)} students) and {len(students)} files in {args.feedback}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
