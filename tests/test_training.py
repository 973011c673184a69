"""The training loop, evaluation and optimizer-state accounting."""

import copy

import pytest
import torch
from torch import nn

from lora_helpers import (apply_lora, evaluate, load_digits_split, optimizer_state_bytes, sweep_learning_rate, train,
                          TinyTransformerClassifier)


@pytest.fixture(scope="module")
def data():
    split = load_digits_split()
    return split.x_train[:256], split.y_train[:256], split.x_test[:128], split.y_test[:128]


def small_model(seed=0):
    torch.manual_seed(seed)
    return TinyTransformerClassifier(d_model=16, n_heads=2, n_layers=1, mlp_ratio=2)


def test_training_reduces_loss_and_records_history(data):
    x, y, xv, yv = data
    model = small_model()
    history = train(model, x, y, epochs=10, lr=1e-2, batch_size=32, x_val=xv, y_val=yv, progress=False)
    assert len(history.loss) == len(history.train_accuracy) == len(history.val_accuracy) == 10
    assert history.loss[-1] < 0.7 * history.loss[0]
    assert history.val_accuracy[-1] > 0.3 and history.seconds > 0
    assert not model.training
    assert history.val_accuracy[-1] == evaluate(model, xv, yv)


def test_training_is_deterministic_for_a_seed(data):
    x, y, *_ = data
    h1 = train(small_model(), x, y, epochs=2, lr=1e-2, seed=3, progress=False)
    h2 = train(small_model(), x, y, epochs=2, lr=1e-2, seed=3, progress=False)
    h3 = train(small_model(), x, y, epochs=2, lr=1e-2, seed=4, progress=False)
    assert h1.loss == h2.loss and h1.loss != h3.loss


def test_frozen_parameters_are_untouched(data):
    x, y, *_ = data
    model = apply_lora(small_model(), ["q_proj", "v_proj"], r=2)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    train(model, x, y, epochs=1, lr=1e-2, progress=False)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())


def test_evaluate_on_a_constructed_model_and_restores_mode():
    class Fixed(nn.Module):  # predicts class (first pixel > 0.5)
        def forward(self, x):
            first = x.reshape(len(x), -1)[:, :1]
            return torch.cat([first <= 0.5, first > 0.5], dim=1).float()

    model = Fixed().train()
    x = torch.tensor([[0.9], [0.1], [0.8], [0.2]])
    assert evaluate(model, x, torch.tensor([1, 0, 0, 0])) == 0.75
    assert evaluate(model, x, torch.tensor([1, 0, 1, 0]), batch_size=3) == 1.0
    assert model.training


def test_optimizer_state_bytes_counts_adam_moments(data):
    x, y, *_ = data
    model = apply_lora(small_model(), ["q_proj"], r=2)
    history = train(model, x, y, epochs=1, lr=1e-3, progress=False)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_tensors = sum(1 for p in model.parameters() if p.requires_grad)
    step_bytes = n_tensors * history.optimizer.state[next(iter(history.optimizer.state))]["step"].element_size()
    assert optimizer_state_bytes(history.optimizer) == 2 * 4 * n_trainable + step_bytes
    assert optimizer_state_bytes(torch.optim.AdamW(model.parameters())) == 0  # no step yet


def test_bad_input(data):
    x, y, xv, yv = data
    model = small_model()
    with pytest.raises(ValueError, match="as many images as labels"):
        train(model, x, y[:-1], epochs=1, lr=1e-3)
    with pytest.raises(ValueError, match="epochs=0 is out of range: need epochs >= 1"):
        train(model, x, y, epochs=0, lr=1e-3)
    with pytest.raises(TypeError, match="batch_size must be an int, got 32.5"):
        train(model, x, y, epochs=1, lr=1e-3, batch_size=32.5)
    with pytest.raises(ValueError, match="lr must be > 0"):
        train(model, x, y, epochs=1, lr=0)
    with pytest.raises(ValueError, match="pass both x_val and y_val"):
        train(model, x, y, epochs=1, lr=1e-3, x_val=xv)
    frozen = copy.deepcopy(model).requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        train(frozen, x, y, epochs=1, lr=1e-3)
    with pytest.raises(TypeError, match="dtype torch.int64, got torch.float32"):
        train(model, x, y.float(), epochs=1, lr=1e-3)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\).*from 10 to 19"):
        train(model, x, y + 10, epochs=1, lr=1e-3)
    with pytest.raises(TypeError, match="must be tensors"):
        evaluate(model, x.numpy(), y)


def test_sweep_learning_rate_picks_the_best_mean_and_knows_the_edges():
    calls = []

    def run(lr, seed):
        calls.append((lr, seed))
        return {1e-3: 0.5, 3e-3: 0.9, 1e-2: 0.7}[lr] + (0.02 if seed else -0.02)

    sweep = sweep_learning_rate(run, [1e-3, 3e-3, 1e-2], seeds=(0, 1), progress=False)
    assert calls == [(lr, s) for lr in (1e-3, 3e-3, 1e-2) for s in (0, 1)]
    assert sweep.best_lr == 3e-3 and sweep.inside_grid and sweep.check_inside_grid() == 3e-3
    assert sweep.mean == pytest.approx([0.5, 0.9, 0.7]) and sweep.std[0] == pytest.approx(0.02828, rel=1e-3)
    assert "3e-03" in sweep.table() and sweep.table().count("*") == 1
    losses = sweep_learning_rate(lambda lr, seed: lr, [1e-3, 3e-3, 1e-2], higher_is_better=False,
                                 progress=False)
    assert losses.best_lr == 1e-3 and not losses.inside_grid
    with pytest.raises(ValueError, match="smallest of the grid"):
        losses.check_inside_grid()


def test_sweep_learning_rate_treats_divergence_as_worst():
    sweep = sweep_learning_rate(lambda lr, seed: float("nan") if lr > 5e-3 else lr,
                                [1e-3, 3e-3, 1e-2], progress=False)
    assert sweep.best_lr == 3e-3


@pytest.mark.parametrize("lrs", [[1e-3, 1e-2], [1e-2, 1e-3, 1e-1], [0.0, 1e-3, 1e-2], [1e-3, 1e-3, 1e-2]])
def test_sweep_learning_rate_refuses_bad_grids(lrs):
    with pytest.raises(ValueError, match="lrs must be"):
        sweep_learning_rate(lambda lr, seed: 0.0, lrs, progress=False)


def test_progress_bars_obey_tqdm_disable(monkeypatch):
    # The notebooks' tests set TQDM_DISABLE=1; tqdm.notebook ignores it, so the helpers read it.
    import lora_helpers.training as training
    calls = []
    real_tqdm = training.tqdm

    def recording_tqdm(*args, **kwargs):
        calls.append(kwargs["disable"])
        return real_tqdm(*args, **{**kwargs, "disable": True})   # no bar in the test's output

    monkeypatch.setattr(training, "tqdm", recording_tqdm)
    torch.manual_seed(0)
    x, y = torch.randn(16, 8, 8), torch.randint(0, 10, (16,))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    train(small_model(), x, y, epochs=1, lr=1e-2, progress=True)
    sweep_learning_rate(lambda lr, seed: lr, [1e-3, 3e-3, 1e-2], progress=True)
    monkeypatch.delenv("TQDM_DISABLE")
    train(small_model(), x, y, epochs=1, lr=1e-2, progress=True)
    train(small_model(), x, y, epochs=1, lr=1e-2, progress=False)
    assert calls == [True, True, False, True]
