"""pretrain_digits_classifier keeps its weights on disk, bit-identical to a fresh training."""

import torch

from lora_helpers import pretrain_digits_classifier


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
