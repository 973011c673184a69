"""conftest.py's xdist work units: what imports PEFT or scikit-learn runs on one worker."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _conftest():
    spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_work_units_group_the_tests_that_share_a_slow_import():
    unit = _conftest().work_unit
    assert unit("tests/test_peft_format.py::test_x", "tests/test_peft_format.py") == "peft"
    assert unit("tests/test_beyond_linear.py::test_conv_equals_peft[a]", "m") == "peft"
    assert unit("notebooks/09_peft_and_scaling.ipynb::Cell 3", "nb") == "peft"
    assert unit("tests/test_benchmarks.py::test_bench_dora_other_setups", "m") == "peft"
    for module in ("test_data", "test_training", "test_pretrained"):
        assert unit(f"tests/{module}.py::test_x[1]", "m") == "digits"
    assert unit("tests/test_layers.py::test_x", "tests/test_layers.py") == "tests/test_layers.py"
    assert unit("tests/test_training_extra.py::test_x", "own") == "own"   # a prefix is not a module
