"""The training loop, evaluation and optimizer-state accounting."""

import copy

import pytest
import torch
from torch import nn

from lora_helpers import (apply_lora, create_loraplus_optimizer, evaluate, load_digits_split, optimizer_state_bytes,
                          progress_bar, quantize_model, sweep_learning_rate, train, TinyTransformerClassifier)


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
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        train(model, x, y, epochs=1, lr=0)
    with pytest.raises(TypeError, match="lr must be a positive number, got None .* pass e.g. lr=1e-3"):
        train(model, x, y, epochs=1, lr=None)  # None is only for optimizer=...
    with pytest.raises(ValueError, match="lr must be a finite number > 0, got inf"):
        train(model, x, y, epochs=1, lr=float("inf"))
    with pytest.raises(ValueError, match="batch_size=0 is out of range"):
        evaluate(model, x, y, batch_size=0)
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



@pytest.mark.parametrize("env,shown", [(None, True), ("1", False), ("true", False), ("0", True)])
def test_progress_bars_respect_tqdm_disable(monkeypatch, capsys, env, shown):
    # tqdm's notebook bars ignore TQDM_DISABLE when `disable` is passed; train must not
    if env is None:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TQDM_DISABLE", env)
    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.arange(8) % 2
    train(nn.Linear(3, 2), x, y, epochs=2, lr=1e-2, progress=True)
    sweep_learning_rate(lambda lr, seed: 0.5, [1e-3, 1e-2, 1e-1], progress=True)
    assert list(progress_bar(range(3), desc="own loop")) == [0, 1, 2]
    err = capsys.readouterr().err
    assert ("epochs" in err and "lr sweep" in err and "own loop" in err) == shown, err
    assert ("epochs" in err or "lr sweep" in err or "own loop" in err) == shown, err
def test_train_with_a_given_optimizer_equals_the_built_in_adamw(data):
    x, y, *_ = data
    built_in = apply_lora(small_model(), ["q_proj"], r=2)
    given = copy.deepcopy(built_in)
    train(built_in, x, y, epochs=1, lr=1e-2, progress=False)
    adamw = torch.optim.AdamW([p for p in given.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    history = train(given, x, y, epochs=1, lr=None, optimizer=adamw, progress=False)
    assert history.optimizer is adamw
    for p, q in zip(built_in.parameters(), given.parameters()):
        assert torch.equal(p, q)


def test_train_with_optimizer_refuses_lr_and_foreign_parameters(data):
    x, y, *_ = data
    model = apply_lora(small_model(), ["q_proj"], r=2)
    adamw = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    with pytest.raises(ValueError, match="lr=None"):
        train(model, x, y, epochs=1, lr=1e-3, optimizer=adamw, progress=False)
    with pytest.raises(ValueError, match="exactly the model's parameters"):
        train(model, x, y, epochs=1, lr=None, optimizer=torch.optim.AdamW(nn.Linear(2, 2).parameters()),
              progress=False)


# --- Adam(W) with foreach=True: the same weights as torch's default, bit for bit ---------------
# On the CPU torch's default Adam(W) loops over the parameters in Python; train,
# train_language_model and create_loraplus_optimizer use foreach=True (faster). Every path the
# notebooks train is compared with a plain loop (torch's default optimizer, one .item() per step,
# the label check in every batch: the loop these functions had before), with torch.equal.

def reference_train(model, x, y, *, epochs, lr, weight_decay=0.0, batch_size=64, seed=0, optimizer=None):
    optimizer = optimizer or torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                               lr=lr, weight_decay=weight_decay, foreach=False)
    generator = torch.Generator().manual_seed(seed)
    losses, accuracies = [], []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y), generator=generator)
        total_loss, correct = 0.0, 0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            logits = model(x[idx])
            loss = nn.functional.cross_entropy(logits, y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(idx)
            correct += (logits.argmax(dim=1) == y[idx]).sum().item()
        losses.append(total_loss / len(order))
        accuracies.append(correct / len(order))
    model.eval()
    return losses, accuracies


def full_width_model(seed=0):
    torch.manual_seed(seed)
    return TinyTransformerClassifier()   # the notebooks' default size (d_model 64, 2 blocks)


ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
PATHS = {   # name -> the model to train (the notebooks' full fine-tuning and adapters)
    "full fine-tuning": lambda: full_width_model(),
    "LoRA q,v": lambda: apply_lora(full_width_model(), ["q_proj", "v_proj"], r=4),
    "DoRA": lambda: apply_lora(full_width_model(), ALL_LINEAR, r=4, use_dora=True),
    "PiSSA": lambda: apply_lora(full_width_model(), ALL_LINEAR, r=4, init_lora_weights="pissa"),
    "LoRA on NF4": lambda: apply_lora(quantize_model(full_width_model(), exclude_modules=["head"]),
                                      ALL_LINEAR, r=4),
}


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("path", PATHS)
def test_train_is_bit_identical_to_torchs_default_adamw_loop(data, path, weight_decay):
    x, y = data[0][:80], data[1][:80]    # batches of 32, 32 and 16: a short last batch too
    ours = PATHS[path]()
    theirs = copy.deepcopy(ours)
    history = train(ours, x, y, epochs=2, lr=1e-2, weight_decay=weight_decay, batch_size=32, seed=5,
                    progress=False)
    assert history.optimizer.defaults["foreach"] is True
    losses, accuracies = reference_train(theirs, x, y, epochs=2, lr=1e-2, weight_decay=weight_decay,
                                         batch_size=32, seed=5)
    assert history.loss == losses and history.train_accuracy == accuracies
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("optimizer_cls, decay", [(torch.optim.AdamW, 0.0), (torch.optim.AdamW, 0.01),
                                                  (torch.optim.Adam, 0.0)])
def test_loraplus_optimizer_is_bit_identical_to_torchs_default(data, optimizer_cls, decay):
    x, y = data[0][:80], data[1][:80]
    ours = apply_lora(full_width_model(), ALL_LINEAR, r=4, use_dora=True)   # magnitudes: 1-D, group B
    ours.head.requires_grad_(True)       # a trainable head (2-D weight with A, bias with B), as in 08
    theirs = copy.deepcopy(ours)
    optimizer = create_loraplus_optimizer(ours, optimizer_cls, lr=1e-3, loraplus_lr_ratio=16,
                                          loraplus_weight_decay=decay)
    assert optimizer.defaults["foreach"] is True
    head = list(ours.head.parameters())   # 08 moves the head into a group of its own
    for group in optimizer.param_groups:
        group["params"] = [p for p in group["params"] if all(p is not h for h in head)]
    optimizer.add_param_group({"params": head, "lr": 3e-3, "weight_decay": 0.0})
    history = train(ours, x, y, epochs=2, lr=None, optimizer=optimizer, batch_size=32, progress=False)
    default = create_loraplus_optimizer(theirs, optimizer_cls, lr=1e-3, loraplus_lr_ratio=16,
                                        loraplus_weight_decay=decay, foreach=False)
    head = list(theirs.head.parameters())
    for group in default.param_groups:
        group["params"] = [p for p in group["params"] if all(p is not h for h in head)]
    default.add_param_group({"params": head, "lr": 3e-3, "weight_decay": 0.0})
    losses, accuracies = reference_train(theirs, x, y, epochs=2, lr=None, optimizer=default, batch_size=32)
    assert history.loss == losses and history.train_accuracy == accuracies
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.equal(p, q), name



def test_train_checks_the_label_range_before_the_first_step(data):
    x, y, *_ = data
    model = small_model()
    before = copy.deepcopy(model)
    bad = y.clone()
    bad[-1] = 10   # the last image, in the last batch of the epoch
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\).*from 0 to 10"):
        train(model, x, bad, epochs=1, lr=1e-2, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before.parameters()))


@pytest.mark.parametrize("kwargs", [{}, {"d_model": 128, "patch_size": 4},
                                    {"d_model": 64, "n_layers": 1, "patch_size": 4, "mlp_ratio": 2}])
def test_logits_do_not_depend_on_the_evaluation_batch(kwargs):
    # evaluate's batch size is a speed setting only: the notebooks' models (04-06's default, 05's
    # wide one, 08's small one, with LoRA) give bit-identical logits in batches of 512 and 256.
    split = load_digits_split()
    x = torch.cat([split.x_train, split.x_test])[:1047]   # a validation split's size
    torch.manual_seed(0)
    model = apply_lora(TinyTransformerClassifier(**kwargs), ["q_proj", "v_proj"], r=4).eval()
    with torch.no_grad():
        by_512, by_256 = (torch.cat([model(x[i:i + b]) for i in range(0, len(x), b)]) for b in (512, 256))
    assert torch.equal(by_512, by_256)
