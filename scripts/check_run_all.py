"""Pre-release check: Run All in JupyterLab, in a real (headless) browser, as a learner would.

Usage (from the repository root, inside the project's virtual environment):

    python scripts/check_run_all.py                                   # every notebook
    python scripts/check_run_all.py notebooks/05_applications.ipynb   # some
    python scripts/check_run_all.py --screenshots shots/ --student    # the student edition

Needs Debian's Chromium (`apt-get install -y chromium fonts-dejavu`) and Playwright's Python
package (`pip install playwright`); never `playwright install`, which downloads browsers of its
own. Not part of .ci/run: it takes as long as all notebooks together, plus a browser.

For each notebook it copies the notebook into a temporary folder (the stored notebooks are never
touched), serves that folder with JupyterLab, opens the notebook in Chromium, runs Kernel ->
Restart Kernel and Run All Cells, waits until the kernel is idle and no cell shows `[*]`, saves,
and checks the saved file:

- the notebook was not marked modified merely by opening it (the stored `language_info`);
- every code cell executed (an execution count), in order: Run All reached the end;
- no error output except in cells tagged `raises-exception`;
- every cell that draws a progress bar (a `tqdm(`, `progress_bar(` or `progress=True` in its source) shows it as a
  widget (an `application/vnd.jupyter.widget-view+json` output), and so does every cell that
  ran for `--slow` seconds or more (JupyterLab records each cell's timing): a learner should
  not look at a bare `[*]` for long. The default (10 s) is for a quiet machine; on a busy one
  every cell is slower, so raise it.

Progress bars are on (TQDM_DISABLE is removed from the environment); the other settings of the
tests (one BLAS thread, PYTHONHASHSEED) are kept. With --student the notebooks are first turned
into the student edition (scripts/make_student_notebooks.py), so Run All runs unanswered.
Exit status 0 when every notebook passes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from conftest import NOTEBOOK_ENV  # noqa: E402  (the tests' settings)

WIDGET = "application/vnd.jupyter.widget-view+json"
BAR_SOURCE = re.compile(r"\btqdm\(|\bprogress_bar\(|progress\s*=\s*True")
# A cell that trains something: train(...), train_xyz(...), pretrain_xyz(...), finetune(...),
# fine_tune_xyz(...), .backward(), .step(), fit(...)
TRAINS = re.compile(r"\b(?:pre)?train(?:_\w*)?\(|\bfine_?tune\w*\(|\.backward\(|\.step\(\)|\bfit\(")
BAR_SELECTOR = ".jp-OutputArea-output .widget-hprogress, .jp-OutputArea-output .jupyter-widget-hprogress"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-default-apps", "--disable-sync", "--no-first-run",
                 "--disable-features=Translate,MediaRouter,OptimizationHints"]
# JupyterLab user settings for the run (a private settings folder, so the user's own settings
# neither change the result nor get changed): render every cell (no windowing, so `[*]` prompts
# of cells off screen are in the page), and record each cell's timing in the saved file.
LAB_SETTINGS = {"@jupyterlab/notebook-extension/tracker.jupyterlab-settings":
                {"windowingMode": "none", "recordTiming": True},
                "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
                {"fetchNews": "false", "checkForUpdates": False}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(folder: Path, settings: Path, port: int, log) -> subprocess.Popen:
    env = dict(os.environ, **NOTEBOOK_ENV)
    env.pop("TQDM_DISABLE", None)       # learners see progress bars
    env.pop("MPLBACKEND", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["JUPYTERLAB_SETTINGS_DIR"] = str(settings)
    env["JUPYTERLAB_WORKSPACES_DIR"] = str(settings / "workspaces")
    for name, values in LAB_SETTINGS.items():
        path = settings / name.split("/", 1)[0] / name.split("/", 1)[1]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
               f"--port={port}", "--IdentityProvider.token=", "--ServerApp.password=",
               f"--ServerApp.root_dir={folder}", "--LabApp.expose_app_in_browser=True"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    lab = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=2)
            return lab
        except OSError:
            if lab.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {lab.returncode}; see its log")
            time.sleep(1)
    lab.terminate()
    raise RuntimeError("jupyter lab did not start within 120 s")


def kernels_idle(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/kernels", timeout=5) as r:
        kernels = json.load(r)
    return bool(kernels) and all(k["execution_state"] == "idle" for k in kernels)


def run_in_browser(page, port: int, name: str, timeout: float, shot: Path | None) -> dict:
    """Open, restart and Run All, wait, save. Returns what the browser saw."""
    page.goto(f"http://127.0.0.1:{port}/lab/tree/{name}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                           " && window.jupyterapp.shell.currentWidget.sessionContext"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                           timeout=120_000)
    deadline = time.monotonic() + 60
    while not kernels_idle(port) and time.monotonic() < deadline:
        time.sleep(1)
    time.sleep(2)
    dirty_on_open = page.evaluate("() => window.jupyterapp.shell.currentWidget.context.model.dirty")
    print(f"     {name}: opened, kernel idle; restart and Run All", flush=True)
    start = time.monotonic()
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:restart-run-all'); }")
    page.click(".jp-Dialog .jp-mod-accept", timeout=30_000)    # "Restart" in the confirmation
    time.sleep(5)
    quiet, bar_shot = 0, shot is None
    # Done: an idle kernel and no [*] prompt for three polls in a row, and the last code cell has
    # run; or ninety such polls (Run All stopped early: the check of the saved file reports it).
    # The kernel can look idle for a moment between two cells, so idleness alone is not enough.
    # Ninety, not fewer: in 08's student edition (JupyterLab 4.6, ipykernel 7) a 28-s cell that
    # draws tqdm widgets showed neither a [*] prompt nor a busy kernel for over 20 polls while it
    # ran (20 polls ended the wait mid-notebook; 90 saw Run All reach the end).
    last_ran = ("() => { const cells = window.jupyterapp.shell.currentWidget.content.widgets"
                ".filter(w => w.model.type === 'code');"
                " return cells.length > 0 && cells[cells.length - 1].model.executionCount !== null; }")
    while not ((quiet >= 3 and page.evaluate(last_ran)) or quiet >= 90):
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{name}: still running after {timeout:.0f} s")
        if not bar_shot and page.locator(BAR_SELECTOR).count():   # the first live progress bar
            try:
                page.locator(BAR_SELECTOR).first.scroll_into_view_if_needed(timeout=5_000)
                page.screenshot(path=str(shot.with_name(shot.stem + "-progress.png")))
                bar_shot = True
            except Exception:   # the bar closed meanwhile (leave=False); try the next one
                pass
        busy = page.locator(".jp-InputPrompt", has_text="[*]").count()
        quiet = quiet + 1 if busy == 0 and kernels_idle(port) else 0
        time.sleep(1)
    seconds = time.monotonic() - start
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty",
                           timeout=60_000)
    time.sleep(1)
    if shot is not None:                   # the first exercise's solution cell, collapsed
        found = page.evaluate(
            "() => { const cell = window.jupyterapp.shell.currentWidget.content.widgets.find("
            " w => w.model.type === 'code' && (w.model.getMetadata('tags') || []).includes('solution'));"
            " if (cell) { cell.node.scrollIntoView({block: 'center'}); } return !!cell; }")
        if found:
            time.sleep(1)
            page.screenshot(path=str(shot.with_name(shot.stem + "-exercise.png")))
    if shot is not None:                   # the end of the notebook, as the learner sees it
        page.evaluate("() => { const cells = window.jupyterapp.shell.currentWidget.content.widgets;"
                      " cells[cells.length - 1].node.scrollIntoView(); }")
        time.sleep(1)
        page.screenshot(path=str(shot))
    page.evaluate("() => window.jupyterapp.commands.execute('application:close-all')")
    page.evaluate("() => window.jupyterapp.serviceManager.kernels.shutdownAll()")
    return {"dirty_on_open": dirty_on_open, "seconds": seconds}


def cell_seconds(cell) -> float | None:
    timing = cell.get("metadata", {}).get("execution", {})
    try:
        begin = timing["iopub.execute_input"]
        end = timing["shell.execute_reply"]
    except KeyError:
        return None
    parse = lambda s: dt.datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(begin)).total_seconds()


def check_saved(path: Path, slow: float) -> tuple[list[str], list[str]]:
    """Problems (failures) and notes found in the notebook JupyterLab saved."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    problems, notes = [], []
    code = [(i, c) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]
    counts = [c["execution_count"] for _, c in code]
    unrun = [i for i, c in code if c["execution_count"] is None]
    if unrun:
        problems.append(f"{len(unrun)} of {len(code)} code cells not executed (first: cell {unrun[0]})")
    elif counts != sorted(counts):
        problems.append("code cells executed out of order")
    for i, cell in code:
        source = "".join(cell["source"])
        tags = cell["metadata"].get("tags", [])
        errors = [o for o in cell["outputs"] if o["output_type"] == "error"]
        if errors and "raises-exception" not in tags:
            problems.append(f"cell {i}: {errors[0]['ename']}: {errors[0]['evalue'][:120]}")
        widget = any(WIDGET in o.get("data", {}) for o in cell["outputs"])
        seconds = cell_seconds(cell)
        # A cell that only defines a function with a bar in it runs in no time and draws none.
        if BAR_SOURCE.search(source) and not widget and (seconds is None or seconds >= 2):
            problems.append(f"cell {i}: draws a progress bar, but no widget was rendered")
        if seconds is not None and seconds >= slow and not widget:
            what = "trained" if TRAINS.search(source) else "ran"
            problems.append(f"cell {i}: {what} for {seconds:.0f} s with no progress bar")
        if widget:
            notes.append(f"cell {i}: progress bar rendered as a widget"
                         + (f" ({seconds:.0f} s)" if seconds is not None else ""))
    return problems, notes


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to check (default: every notebooks/*.ipynb)")
    parser.add_argument("--student", action="store_true",
                        help="check the student edition instead of the stored notebooks")
    parser.add_argument("--screenshots", type=Path, help="save one screenshot per notebook here")
    parser.add_argument("--keep", type=Path, help="copy the notebooks as saved by JupyterLab here")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per notebook")
    parser.add_argument("--slow", type=float, default=10,
                        help="a cell that runs this many seconds must show a progress bar")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright  # a maintainer's tool: imported on use

    paths = [p.resolve() for p in args.notebooks] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    work = Path(tempfile.mkdtemp(prefix="check_run_all_"))
    folder, settings = work / "notebooks", work / "settings"
    folder.mkdir()
    if args.student:
        from make_student_notebooks import write_student_notebooks
        write_student_notebooks(folder, paths)
    else:
        for path in paths:
            shutil.copy2(path, folder / path.name)
    if args.screenshots:
        args.screenshots.mkdir(parents=True, exist_ok=True)
    port = free_port()
    failed = 0
    with open(work / "jupyter-lab.log", "w") as log:
        lab = start_lab(folder, settings, port, log)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                for path in paths:
                    shot = args.screenshots / f"{path.stem}.png" if args.screenshots else None
                    try:
                        seen = run_in_browser(page, port, path.name, args.timeout, shot)
                        problems, notes = check_saved(folder / path.name, args.slow)
                        if seen["dirty_on_open"]:
                            problems.insert(0, "marked modified as soon as it opened")
                    except Exception as error:  # report and go on with the next notebook
                        seen, problems, notes = {"seconds": float("nan")}, [f"{type(error).__name__}: {error}"], []
                    status = "FAIL" if problems else "ok"
                    failed += bool(problems)
                    print(f"{status:4} {path.name} ({seen['seconds']:.0f} s in the browser)", flush=True)
                    for line in problems:
                        print(f"     - {line}", flush=True)
                    for line in notes:
                        print(f"       {line}", flush=True)
                browser.close()
        finally:
            lab.terminate()
            try:
                lab.wait(timeout=30)
            except subprocess.TimeoutExpired:
                lab.kill()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        for path in paths:
            shutil.copy2(folder / path.name, args.keep / path.name)
    shutil.rmtree(work, ignore_errors=True)
    print(f"{len(paths) - failed} of {len(paths)} notebooks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
