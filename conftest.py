"""Root pytest configuration, shared by the unit tests and strict nbval over the notebooks.

Notebook kernels inherit this process's environment, so the variables below reach them; the
script that re-executes the stored outputs (scripts/execute_notebooks.py) sets the same ones,
so stored and tested outputs come from the same settings.
"""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent

NOTEBOOK_ENV = {
    "TQDM_DISABLE": "1",       # progress bars are for people; stored outputs stay bar-free
    "PYTHONHASHSEED": "0",
    "PYDEVD_DISABLE_FILE_VALIDATION": "1",  # silences a debugger warning on stderr
    # One BLAS/OpenMP thread: the notebooks' matrices are small, and on a busy 2-core machine
    # two threads fighting for cores made small SVDs and trainings 20-200x slower (measured).
    # It also makes results independent of the machine's core count.
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    # Hugging Face libraries (notebook 09, tests/test_peft_format.py) never reach the Hub: the
    # models are built from configs, and an accidental download must fail rather than happen.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
os.environ.update(NOTEBOOK_ENV)
os.environ.pop("MPLBACKEND", None)  # Agg here would stop inline figures in the kernels


def pytest_configure(config):
    # Hypothesis's profile for every process that runs tests. The pytest-xdist controller runs
    # none, so it skips the import (about 1 s of CPU before the workers start).
    if getattr(config, "workerinput", None) is not None or config.getoption("dist", "no") == "no":
        from hypothesis import settings

        settings.register_profile("default", deadline=None, print_blob=True)
        settings.load_profile("default")
    # nbval reads the sanitizer path relative to the current directory; make it absolute so
    # `pytest` works from any folder of the checkout.
    path = getattr(config.option, "nbval_sanitize_with", None)
    if path and not Path(path).is_absolute():
        config.option.nbval_sanitize_with = str(ROOT / path)


# Test modules that run the benchmark scripts, some of which compare with PEFT (bench_vs_peft.py,
# bench_dora.py's PEFT rows), and the modules that load the digits (scikit-learn's import: about
# 1.8 s of CPU in each process that does it).
PEFT_MODULES = ("tests/test_benchmarks.py",)
DIGITS_MODULES = ("tests/test_data.py", "tests/test_training.py", "tests/test_pretrained.py")


def work_unit(nodeid: str, default: str) -> str:
    """The xdist work unit of a test: "peft", "digits", or ``default`` (loadscope's own)."""
    if "peft" in nodeid.lower() or nodeid.startswith(PEFT_MODULES):
        return "peft"
    if nodeid.startswith(DIGITS_MODULES):
        return "digits"
    return default


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadscope``, with the tests that import PEFT in one work unit and those that load the
    digits in another.

    Importing PEFT (and transformers with it) costs about 5 s of CPU in each process that does
    it. The tests that compare with PEFT (``tests/test_peft_format.py``, ``test_*_peft*`` in other
    modules, the benchmark scripts' tests) and notebook 09 therefore run on one worker, which imports
    it once, instead of on both; likewise the three test modules that load the digits through
    scikit-learn. Everything else is scheduled as by ``loadscope``: a module's functions together,
    and a notebook's cells together and in order, as nbval needs.
    """
    if config.getvalue("dist") != "loadscope":
        return None  # xdist's own scheduler for the other modes

    from xdist.scheduler import LoadScopeScheduling

    class SharedImportsTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid, super()._split_scope(nodeid))

    return SharedImportsTogether(config, log)
