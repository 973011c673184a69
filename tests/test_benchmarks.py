"""The benchmark scripts still run (tiny sizes, no timing claims: those live in the README).

Each script's ``main()`` runs in this process with its command line set: a fresh interpreter
would spend more on importing torch (and PEFT) than the benchmark spends at these sizes.
"""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


@pytest.fixture
def run(monkeypatch, capsys):
    """``run(script, *args)`` -> an object with ``returncode``, ``stdout`` and ``stderr``."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))   # the scripts import their shared `timing`
    threads = torch.get_num_threads()

    def _run(script, *args):
        spec = importlib.util.spec_from_file_location(Path(script).stem, BENCHMARKS / script)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setattr(sys, "argv", [script, *args])
        returncode = 0
        try:
            spec.loader.exec_module(module)
            module.main()
        except SystemExit as exit_:
            returncode = exit_.code if isinstance(exit_.code, int) else 1
            if isinstance(exit_.code, str):
                print(exit_.code, file=sys.stderr)
        finally:
            torch.set_num_threads(threads)
        out = capsys.readouterr()
        return SimpleNamespace(returncode=returncode, stdout=out.out, stderr=out.err)

    return _run


def test_bench_lora_linear_runs_and_prints_every_rank(run):
    result = run("bench_lora_linear.py", "--d", "32", "--r", "4", "--batch", "8",
                 "--repeats", "3", "--sweep", "1", "16")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    ranks = [row[0] for row in rows if len(row) >= 4 and row[0].isdigit()]
    assert ranks == ["4", "1", "16"], result.stdout   # table (a)/(b), r = 4 first
    layout = [row for row in rows if len(row) == 2 and row[0].isdigit()]
    assert [row[0] for row in layout] == ["4", "1", "16"], result.stdout   # table (c)
    assert all(float(x) > 0 for row in rows if len(row) >= 4 and row[0].isdigit() for x in row[1:4])


def test_bench_vs_peft_explains_a_missing_peft(run):
    if importlib.util.find_spec("peft") is not None:
        result = run("bench_vs_peft.py", "--d", "32", "--r", "4", "--batch", "8", "--repeats", "3")
        assert result.returncode == 0 and "LoRALinear / PEFT" in result.stdout, result.stderr
    else:
        result = run("bench_vs_peft.py")
        assert result.returncode != 0 and "pip install peft" in result.stderr


def test_bench_dora_runs_and_prints_every_ratio(run):
    result = run("bench_dora.py", "--d", "32", "--r", "4", "--batch", "8", "--repeats", "3")
    assert result.returncode == 0, result.stderr
    ratios = {line.rsplit(None, 1)[0].strip(): float(line.rsplit(None, 1)[1])
              for line in result.stdout.splitlines() if line.startswith("  ")}
    expected = {"DoRA / LoRA", "DoRA / nn.Linear", "LoRA / nn.Linear"}
    if importlib.util.find_spec("peft") is not None:
        expected |= {"DoRA / PEFT's DoRA   (target <= 0.6)", "PEFT's DoRA / nn.Linear"}
    assert expected <= set(ratios), result.stdout
    assert all(value > 0 for value in ratios.values())


def test_bench_dora_other_setups(run):
    result = run("bench_dora.py", "--d", "32", "--r", "4", "--batch", "8", "--repeats", "3",
                 "--threads", "1", "--no-input-grad")
    assert result.returncode == 0, result.stderr
    assert "1 threads" in result.stdout and "input without gradient" in result.stdout
    assert "DoRA / LoRA" in result.stdout and "nn.Linear" not in result.stdout.split("ratio of medians")[1]


def test_bench_nf4_runs_and_prints_every_ratio(run):
    result = run("bench_nf4.py", "--d", "64", "--r", "4", "--batch", "8", "--repeats", "3")
    assert result.returncode == 0, result.stderr
    ratios = [line.rsplit(":", 1)[1] for line in result.stdout.splitlines()
              if line.startswith(("(a)", "(b)", "(c)", "    forward"))]
    assert len(ratios) == 4 and all(float(r) > 0 for r in ratios), result.stdout
    assert "NF4 2,304 B (4.5000 bits/param)" in result.stdout   # 64·64/2 + 4·64 bytes


def test_bench_inference_runs_and_prints_every_variant(run):
    result = run("bench_inference.py", "--d", "16", "--tokens", "2", "--rounds", "1")
    assert result.returncode == 0, result.stderr
    assert "logits agree: True" in result.stdout
    speeds = [line for line in result.stdout.splitlines() if line.endswith("the base")]
    assert [line.split("  ")[1].strip() for line in speeds] == [
        "base", "unmerged (LoRALinear)", "unmerged (bare arithmetic)", "merged"]
