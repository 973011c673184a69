"""The training loop, evaluation and optimizer-state accounting."""

import copy
import math

import pytest
import torch
from torch import nn

from lora_helpers import (apply_lora, create_loraplus_optimizer, evaluate, load_digits_split, optimizer_state_bytes,
                          pretrain_digits_classifier, progress_bar, quantize_model, sample_batch, sweep_learning_rate, train,
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


def test_sweep_learning_rate_picks_the_best_mean_and_knows_the_edges():
    calls = []

    def run(lr, seed):
        calls.append((lr, seed))
        return {1e-3: 0.5, 3e-3: 0.9, 1e-2: 0.7}[lr] + (0.02 if seed else -0.02)

    sweep = sweep_learning_rate(run, [1e-3, 3e-3, 1e-2], seeds=(0, 1), progress=False)
    assert calls == [(lr, s) for lr in (1e-3, 3e-3, 1e-2) for s in (0, 1)]
    assert sweep.best_lr == 3e-3 and sweep.inside_grid and sweep.check_inside_grid() == 3e-3
    assert sweep.mean == pytest.approx([0.5, 0.9, 0.7]) and sweep.std[0] == pytest.approx(0.02828, rel=1e-3)
    assert "0.003" in sweep.table() and sweep.table().count("*") == 1
    rows = sweep_learning_rate(lambda lr, seed: lr, [2.5e-3, 5e-3, 0.16], progress=False).table().splitlines()
    assert [row.split()[0] for row in rows[1:]] == ["0.0025", "0.005", "0.16"]  # each rate as given, not rounded
    losses = sweep_learning_rate(lambda lr, seed: lr, [1e-3, 3e-3, 1e-2], higher_is_better=False,
                                 progress=False)
    assert losses.best_lr == 1e-3 and not losses.inside_grid
    with pytest.raises(ValueError, match="smallest of the grid"):
        losses.check_inside_grid()


def test_tie_rule_picks_the_smallest_rate_within_one_standard_error():
    # 3e-3 and 1e-2 differ by 0.001, far less than the seeds' spread: they tie, the smaller wins
    table = {1e-3: 0.80, 3e-3: 0.900, 1e-2: 0.901, 3e-2: 0.7}
    sweep = sweep_learning_rate(lambda lr, seed: table[lr] + (0.01 if seed else -0.01),
                                [1e-3, 3e-3, 1e-2, 3e-2], seeds=(0, 1), progress=False)
    assert sweep.top_index == 2 and sweep.margin == pytest.approx(0.01)
    assert sweep.best_lr == 3e-3 and sweep.best_score == pytest.approx(0.9)
    rows = sweep.table().splitlines()
    assert rows[2].endswith(" *") and rows[3].endswith(" =") and not rows[1].endswith(("*", "="))
    # with no spread (identical seeds) the better mean wins however small the difference ...
    exact = sweep_learning_rate(lambda lr, seed: table[lr], [1e-3, 3e-3, 1e-2, 3e-2], seeds=(0, 1),
                                progress=False)
    assert exact.best_lr == 1e-2 and exact.margin == 0.0
    # ... unless a tolerance says such differences are noise
    tol = sweep_learning_rate(lambda lr, seed: table[lr], [1e-3, 3e-3, 1e-2, 3e-2], tolerance=0.005,
                              progress=False)
    assert tol.best_lr == 3e-3 and tol.margin == 0.005
    # lower is better: within the margin means at most best + margin
    loss = sweep_learning_rate(lambda lr, seed: {1e-3: 2.0, 3e-3: 1.504, 1e-2: 1.5}[lr], [1e-3, 3e-3, 1e-2],
                               higher_is_better=False, tolerance=0.01, progress=False)
    assert loss.best_lr == 3e-3 and loss.top_index == 2


def test_sweep_table_prints_a_dash_for_the_std_of_one_seed():
    one = sweep_learning_rate(lambda lr, seed: lr, [1e-3, 3e-3, 1e-2], progress=False).table()
    assert "0.0000" not in one and all(row.split()[2] == "–" for row in one.splitlines()[1:])
    two = sweep_learning_rate(lambda lr, seed: lr + seed, [1e-3, 3e-3, 1e-2], seeds=(0, 1), progress=False)
    assert two.table().splitlines()[1].split()[2] == "0.7071"


@pytest.mark.parametrize("tolerance", [-0.1, float("nan"), float("inf"), "0.01", True])
def test_sweep_refuses_a_bad_tolerance(tolerance):
    with pytest.raises(ValueError, match="tolerance must be"):
        sweep_learning_rate(lambda lr, seed: 0.0, [1e-3, 1e-2, 1e-1], tolerance=tolerance, progress=False)


def test_sweep_says_so_when_every_rate_diverged():
    with pytest.raises(ValueError, match="every learning rate .* diverged"):
        sweep_learning_rate(lambda lr, seed: float("nan"), [1e-3, 1e-2, 1e-1], progress=False)


def test_sweep_learning_rate_treats_divergence_as_worst():
    sweep = sweep_learning_rate(lambda lr, seed: float("nan") if lr > 5e-3 else lr,
                                [1e-3, 3e-3, 1e-2], progress=False)
    assert sweep.best_lr == 3e-3
    # a diverged loss is the worst loss (+inf), not the best
    losses = sweep_learning_rate(lambda lr, seed: float("nan") if lr < 2e-3 else lr,
                                 [1e-3, 3e-3, 1e-2], higher_is_better=False, progress=False)
    assert losses.scores[0] == [float("inf")] and losses.best_lr == 3e-3


@pytest.mark.parametrize("lrs", [[1e-3, 1e-2], [1e-2, 1e-3, 1e-1], [0.0, 1e-3, 1e-2], [1e-3, 1e-3, 1e-2]])
def test_sweep_learning_rate_refuses_bad_grids(lrs):
    with pytest.raises(ValueError, match="lrs must be"):
        sweep_learning_rate(lambda lr, seed: 0.0, lrs, progress=False)


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
# ---------------------------------------------------------------- language models
from lora_helpers import CharGPT, bits_per_character, train_language_model  # noqa: E402


def tiny_gpt(seed=0, vocab=8, context=8):
    torch.manual_seed(seed)
    return CharGPT(vocab, context=context, d_model=16, n_heads=2, n_layers=1, mlp_ratio=2)


def periodic_ids(n=600, period=4):
    return torch.arange(n) % period  # "0123012301..." : perfectly predictable after one period


def test_bits_per_character_of_a_uniform_model_is_log2_vocab():
    model = tiny_gpt(vocab=8)
    with torch.no_grad():  # zero head: every logit 0, so p = 1/8 for every character
        model.lm_head.weight.zero_()
        model.lm_head.bias.zero_()
    assert bits_per_character(model, periodic_ids(100)) == pytest.approx(3.0, abs=1e-6)


def test_bits_per_character_matches_a_direct_computation():
    model = tiny_gpt()
    data = torch.randint(8, (75,), generator=torch.Generator().manual_seed(0))
    model.train()
    value = bits_per_character(model, data, batch_size=3)
    assert model.training  # mode restored
    x, y = data[:72].view(9, 8), data[1:73].view(9, 8)  # 9 windows of 8, the last 2 unscored
    with torch.no_grad():
        logp = model.eval()(x).log_softmax(-1).gather(-1, y[..., None])
    assert value == pytest.approx(-logp.mean().item() / torch.log(torch.tensor(2.0)).item(), rel=1e-5)
    assert bits_per_character(model, data, context=4) != value  # shorter windows, other number
    # the smallest text that makes one window: context + 1 ids (the last one only as a target)
    one = bits_per_character(model, data[:9])
    with torch.no_grad():
        logp = model(data[:8][None]).log_softmax(-1).gather(-1, data[1:9][None, :, None])
    assert one == pytest.approx(-logp.mean().item() / math.log(2), rel=1e-5)
    with pytest.raises(ValueError, match="need at least context \\+ 1 = 9"):
        bits_per_character(model, data[:8])


def test_language_model_learns_a_periodic_sequence():
    model = tiny_gpt()
    data = periodic_ids()
    before = bits_per_character(model, data)
    history = train_language_model(model, data, steps=60, lr=1e-2, batch_size=8, val_data=data[:200],
                                   eval_every=20, progress=False)
    assert history.eval_steps == [20, 40, 60] and len(history.val_bpc) == 3 and len(history.loss) == 60
    assert history.val_bpc[-1] < 0.1 < 2.0 < before
    assert not model.training and history.seconds > 0


def test_language_model_training_is_seeded_and_trains_only_what_requires_grad():
    data = periodic_ids()
    a, b = tiny_gpt(), tiny_gpt()
    ha = train_language_model(a, data, steps=5, lr=1e-3, seed=3, progress=False)
    hb = train_language_model(b, data, steps=5, lr=1e-3, seed=3, progress=False)
    assert ha.loss == hb.loss and ha.val_bpc == [] == ha.eval_steps
    model = apply_lora(tiny_gpt(), ["q_proj", "v_proj"], r=2)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    train_language_model(model, data, steps=5, lr=1e-2, progress=False)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    trainable = [p for p in model.parameters() if p.requires_grad]  # A and B of q and v: 4 tensors
    optimizer = train_language_model(model, data, steps=1, lr=1e-3, progress=False).optimizer
    # Adam: two float32 moments per trainable number and a float32 step count per tensor
    assert optimizer_state_bytes(optimizer) == 2 * 4 * sum(p.numel() for p in trainable) + 4 * len(trainable)


def test_language_model_functions_refuse_bad_input():
    model, data = tiny_gpt(), periodic_ids()
    with pytest.raises(TypeError, match="1-D torch.long tensor"):
        train_language_model(model, data.float(), steps=1, lr=1e-3)
    with pytest.raises(ValueError, match="context=9 is longer than the model's context 8"):
        train_language_model(model, data, steps=1, lr=1e-3, context=9)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        train_language_model(model, data, steps=1, lr=0)
    with pytest.raises(TypeError, match="steps must be an int"):
        train_language_model(model, data, steps=10.0, lr=1e-3)
    with pytest.raises(ValueError, match="eval_every needs val_data"):
        train_language_model(model, data, steps=1, lr=1e-3, eval_every=1)
    with pytest.raises(ValueError, match="need at least context \\+ 1 = 9"):
        bits_per_character(model, data[:8])
    with pytest.raises(TypeError, match="val_data must be a 1-D torch.long tensor"):
        train_language_model(model, data, steps=1, lr=1e-3, val_data=[1, 2])
    with pytest.raises(ValueError, match="pass context=..."):
        bits_per_character(nn.Identity(), data)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        train_language_model(model, data, steps=1, lr=1e-3)
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
    x, y, *_ = data
    ours = PATHS[path]()
    theirs = copy.deepcopy(ours)
    history = train(ours, x, y, epochs=2, lr=1e-2, weight_decay=weight_decay, seed=5, progress=False)
    assert history.optimizer.defaults["foreach"] is True
    losses, accuracies = reference_train(theirs, x, y, epochs=2, lr=1e-2, weight_decay=weight_decay, seed=5)
    assert history.loss == losses and history.train_accuracy == accuracies
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("optimizer_cls, decay", [(torch.optim.AdamW, 0.0), (torch.optim.AdamW, 0.01),
                                                  (torch.optim.Adam, 0.0)])
def test_loraplus_optimizer_is_bit_identical_to_torchs_default(data, optimizer_cls, decay):
    x, y, *_ = data
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
    history = train(ours, x, y, epochs=2, lr=None, optimizer=optimizer, progress=False)
    default = create_loraplus_optimizer(theirs, optimizer_cls, lr=1e-3, loraplus_lr_ratio=16,
                                        loraplus_weight_decay=decay, foreach=False)
    head = list(theirs.head.parameters())
    for group in default.param_groups:
        group["params"] = [p for p in group["params"] if all(p is not h for h in head)]
    default.add_param_group({"params": head, "lr": 3e-3, "weight_decay": 0.0})
    losses, accuracies = reference_train(theirs, x, y, epochs=2, lr=None, optimizer=default)
    assert history.loss == losses and history.train_accuracy == accuracies
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("lora", [False, True])
def test_language_model_training_is_bit_identical_to_torchs_default_adamw_loop(lora):
    data = periodic_ids()
    ours = apply_lora(tiny_gpt(), ["q_proj", "v_proj"], r=2) if lora else tiny_gpt()
    theirs = copy.deepcopy(ours)
    history = train_language_model(ours, data, steps=12, lr=1e-2, batch_size=8, weight_decay=0.01, seed=2,
                                   progress=False)
    assert history.optimizer.defaults["foreach"] is True
    optimizer = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=1e-2,
                                  weight_decay=0.01, foreach=False)
    generator, losses = torch.Generator().manual_seed(2), []
    theirs.train()
    for _ in range(12):
        xb, yb = sample_batch(data, theirs.context, 8, generator)
        loss = nn.functional.cross_entropy(theirs(xb).flatten(0, 1), yb.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert history.loss == losses
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


# --- pretrain_digits_classifier keeps its weights on disk ---------------------------------------

def test_pretrained_weights_are_cached_bit_identically(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_HELPERS_CACHE", str(tmp_path))
    kwargs = dict(seed=3, epochs=1, d_model=16, n_heads=2, n_layers=1, mlp_ratio=2)
    trained, split, history = pretrain_digits_classifier(**kwargs)
    after_training = torch.get_rng_state()
    assert len(list(tmp_path.glob("digits-*.pt"))) == 1 and history.optimizer is not None
    loaded, _, stored = pretrain_digits_classifier(**kwargs)
    assert torch.equal(torch.get_rng_state(), after_training)   # the global generator as if trained
    assert stored.loss == history.loss and stored.train_accuracy == history.train_accuracy
    assert stored.optimizer is None and not loaded.training
    for (name, p), q in zip(trained.named_parameters(), loaded.parameters()):
        assert torch.equal(p, q), name
    fresh, _, _ = pretrain_digits_classifier(**kwargs, cache=False)   # trains again: the same weights
    assert all(torch.equal(p, q) for p, q in zip(fresh.parameters(), loaded.parameters()))
    pretrain_digits_classifier(**{**kwargs, "seed": 4})               # other settings: another file
    assert len(list(tmp_path.glob("digits-*.pt"))) == 2


def test_a_cached_base_is_not_reused_when_the_training_data_changes(tmp_path, monkeypatch):
    # Another scikit-learn (or digits file) could give another split: the stored weights were
    # trained on the old one, so the name must change with the data, not only with the settings.
    import lora_helpers.pretrained as pretrained
    monkeypatch.setenv("LORA_HELPERS_CACHE", str(tmp_path))
    kwargs = dict(seed=0, epochs=1, d_model=16, n_heads=2, n_layers=1, mlp_ratio=2)
    pretrain_digits_classifier(**kwargs)
    real = pretrained.load_digits_split

    def shifted():
        split = real()
        return split._replace(x_train=split.x_train.roll(1, dims=0), y_train=split.y_train.roll(1))

    monkeypatch.setattr(pretrained, "load_digits_split", shifted)
    _, _, history = pretrain_digits_classifier(**kwargs)
    assert history.optimizer is not None                 # trained, not loaded
    assert len(list(tmp_path.glob("digits-*.pt"))) == 2


def test_a_loaded_base_says_so_with_a_progress_bar(tmp_path, monkeypatch, capsys):
    # A learner who asked for progress sees where the base came from (nothing is drawn under
    # TQDM_DISABLE, so stored notebook outputs do not depend on the cache).
    monkeypatch.setenv("LORA_HELPERS_CACHE", str(tmp_path))
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    kwargs = dict(seed=5, epochs=1, d_model=16, n_heads=2, n_layers=1, mlp_ratio=2)
    pretrain_digits_classifier(**kwargs)
    capsys.readouterr()
    pretrain_digits_classifier(**kwargs, progress=True)
    assert f"pretrained base loaded from {tmp_path}" in capsys.readouterr().err
    pretrain_digits_classifier(**kwargs, progress=False)
    assert capsys.readouterr().err == ""


def test_pretraining_cache_can_be_switched_off_and_survives_a_broken_file(tmp_path, monkeypatch):
    kwargs = dict(seed=0, epochs=1, d_model=16, n_heads=2, n_layers=1, mlp_ratio=2)
    monkeypatch.setenv("LORA_HELPERS_CACHE", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    pretrain_digits_classifier(**kwargs)
    assert not any(tmp_path.rglob("*.pt"))
    monkeypatch.setenv("LORA_HELPERS_CACHE", str(tmp_path))
    reference, _, _ = pretrain_digits_classifier(**kwargs, cache=False)
    pretrain_digits_classifier(**kwargs)
    (path,) = tmp_path.glob("digits-*.pt")
    path.write_bytes(b"not a checkpoint")
    model, _, history = pretrain_digits_classifier(**kwargs)          # trains again, replaces the file
    assert history.optimizer is not None
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters()))
    assert torch.load(path, weights_only=True)["loss"] == history.loss
