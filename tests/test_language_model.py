"""The character language model's training loop and bits per character."""

import copy
import math

import pytest
import torch
from torch import nn

from lora_helpers import (CharGPT, apply_lora, bits_per_character, optimizer_state_bytes, sample_batch,
                          train_language_model)


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
