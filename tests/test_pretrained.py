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


def _build_script():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "scripts" / "build_pretrained_weights.py"
    spec = importlib.util.spec_from_file_location("build_pretrained_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shipped_bases_are_the_notebooks_recipes_and_current():
    # Stale files would be ignored silently (each notebook would train its base again, ~10 s):
    # fail here instead, with the command that rebuilds them.
    from lora_helpers.pretrained import WEIGHTS_DIR, shipped_weights_name
    script = _build_script()
    names = {shipped_weights_name(**settings) for settings in script.RECIPES.values()}
    assert {p.name for p in WEIGHTS_DIR.glob("*.safetensors")} == names
    stale = [name for name, settings in script.RECIPES.items() if not script.is_current(settings)]
    assert not stale, f"shipped bases {stale} are stale: run python scripts/build_pretrained_weights.py"


def test_a_shipped_base_is_loaded_instead_of_trained_and_only_while_its_sources_match(tmp_path, monkeypatch):
    import lora_helpers.pretrained as pretrained
    monkeypatch.setenv("LORA_HELPERS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path / "weights")
    settings = dict(seed=6, epochs=1, lr=3e-3, batch_size=64, d_model=16, n_heads=2, n_layers=1, mlp_ratio=2)
    trained, split, history = pretrain_digits_classifier(**settings, cache=False)
    after_training = torch.get_rng_state()
    path = pretrained.save_shipped_weights(trained, split, history, folder=tmp_path / "weights", **settings)
    assert path.name == "digits-batch_size64-d_model16-epochs1-lr0.003-mlp_ratio2-n_heads2-n_layers1-seed6.safetensors"
    loaded, _, stored = pretrain_digits_classifier(**settings)
    assert torch.equal(torch.get_rng_state(), after_training)
    assert stored.optimizer is None and not loaded.training
    assert (stored.loss, stored.train_accuracy, stored.seconds) == (history.loss, history.train_accuracy, history.seconds)
    assert all(torch.equal(p, q) for p, q in zip(trained.state_dict().values(), loaded.state_dict().values()))
    assert not (tmp_path / "cache").exists()                    # loaded: nothing trained, nothing cached
    # Another training loop (here: its source hash) makes the shipped file foreign: trained instead.
    real = pretrained._provenance
    monkeypatch.setattr(pretrained, "_provenance", lambda split: {**real(split), "source_sha256": "changed"})
    _, _, retrained = pretrain_digits_classifier(**settings)
    assert retrained.optimizer is not None and len(list((tmp_path / "cache").glob("digits-*.pt"))) == 1


def test_the_shipped_one_block_base_is_what_its_recipe_trains():
    # The shipped file is a training's result, not an arbitrary checkpoint: train the smallest
    # recipe again (one thread, as the notebooks do). Bit for bit on the CPU kind it was made on;
    # elsewhere the arithmetic differs in the last digits, so the same training accuracy (±1 image in 100).
    from safetensors import safe_open
    from lora_helpers.pretrained import WEIGHTS_DIR, shipped_weights_name
    settings = _build_script().RECIPES["08 (one block)"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        shipped, _, stored = pretrain_digits_classifier(**settings)
        after_loading = torch.get_rng_state()
        trained, _, history = pretrain_digits_classifier(**settings, cache=False)
    finally:
        torch.set_num_threads(threads)
    assert stored.optimizer is None and history.optimizer is not None
    assert torch.equal(torch.get_rng_state(), after_loading)
    with safe_open(str(WEIGHTS_DIR / shipped_weights_name(**settings)), framework="pt") as f:
        made_with = f.metadata()["trained_with"]
    here = (f"torch {torch.__version__}, 1 thread(s), "
            f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    if made_with == here:
        assert stored.loss == history.loss
        assert all(torch.equal(p, q) for p, q in zip(shipped.state_dict().values(), trained.state_dict().values()))
    else:
        assert abs(stored.train_accuracy[-1] - history.train_accuracy[-1]) <= 0.01
