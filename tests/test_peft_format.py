"""PEFT's adapter files: round trips here, round trips with real PEFT, key names, config, refusals."""

import copy
import json
import os

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from lora_helpers import (LoRALinear, apply_lora, load_peft_adapter, lora_layers, merge_lora,
                          save_peft_adapter)
from lora_helpers.peft_format import CONFIG_NAME, WEIGHTS_NAME

safetensors_torch = pytest.importorskip("safetensors.torch")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the Hub (conftest may set it too)
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class Block(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, 6)
        self.mlp = nn.Sequential(nn.Linear(6, 12), nn.GELU(), nn.Linear(12, d))

    def forward(self, x):
        return self.mlp(self.v_proj(self.q_proj(x) * torch.sigmoid(self.k_proj(x)))) + x


def make_base(seed=0, n=2):
    torch.manual_seed(seed)
    return nn.Sequential(*[Block() for _ in range(n)])


def randomize(model, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_A.normal_()
            layer.lora_B.normal_()
    return model


def adapted(seed=0, **kwargs):
    kwargs.setdefault("target_modules", ["q_proj", "v_proj"])
    kwargs.setdefault("r", 2)
    return randomize(apply_lora(make_base(seed), **kwargs))


def test_round_trip_here_gives_identical_outputs(tmp_path):
    model = adapted(lora_alpha=4, use_rslora=True)
    save_peft_adapter(model, tmp_path)
    loaded = load_peft_adapter(make_base(), tmp_path)
    x = torch.randn(5, 8)
    assert torch.equal(loaded(x), model(x))
    assert [(n, l.r, l.lora_alpha, l.scaling) for n, l in lora_layers(loaded)] == \
        [(n, l.r, l.lora_alpha, l.scaling) for n, l in lora_layers(model)]
    trainable = {n for n, p in loaded.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)


def test_file_names_keys_shapes_and_metadata(tmp_path):
    save_peft_adapter(adapted(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    assert (CONFIG_NAME, WEIGHTS_NAME) == ("adapter_config.json", "adapter_model.safetensors")
    tensors = safetensors_torch.load_file(str(tmp_path / WEIGHTS_NAME))
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        f"base_model.model.{i}.{m}.lora_{ab}.weight": shape
        for i in (0, 1) for m, out in (("q_proj", 8), ("v_proj", 6))
        for ab, shape in (("A", (2, 8)), ("B", (out, 2)))}
    from safetensors import safe_open
    with safe_open(str(tmp_path / WEIGHTS_NAME), "pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_config_fields_and_peft_defaults(tmp_path):
    written = save_peft_adapter(adapted(lora_alpha=16), tmp_path, base_model_name_or_path="tiny",
                                task_type="CAUSAL_LM")
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config == written
    assert {k: config[k] for k in ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules",
                                   "bias", "use_rslora", "use_dora", "init_lora_weights",
                                   "modules_to_save", "base_model_name_or_path", "task_type",
                                   "rank_pattern", "alpha_pattern", "fan_in_fan_out")} == {
        "peft_type": "LORA", "r": 2, "lora_alpha": 16, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"], "bias": "none", "use_rslora": False,
        "use_dora": False, "init_lora_weights": True, "modules_to_save": None,
        "base_model_name_or_path": "tiny", "task_type": "CAUSAL_LM", "rank_pattern": {},
        "alpha_pattern": {}, "fan_in_fan_out": False}
    assert isinstance(config["lora_dropout"], float)


def test_target_modules_fall_back_to_full_paths_when_short_names_would_pick_more(tmp_path):
    model = randomize(apply_lora(make_base(), ["0.q_proj"], r=2))  # not 1.q_proj
    config = save_peft_adapter(model, tmp_path)
    assert config["target_modules"] == ["0.q_proj"]
    loaded = load_peft_adapter(make_base(), tmp_path)
    assert [n for n, _ in lora_layers(loaded)] == ["0.q_proj"]


def test_target_modules_use_peft_suffix_rule(tmp_path):
    def base():
        torch.manual_seed(0)
        return nn.ModuleDict({"q_proj": nn.Linear(4, 4), "xq_proj": nn.Linear(4, 4)})
    config = save_peft_adapter(apply_lora(base(), ["q_proj"], r=1), tmp_path)
    assert config["target_modules"] == ["q_proj"]
    assert [n for n, _ in lora_layers(load_peft_adapter(base(), tmp_path))] == ["q_proj"]


def test_target_modules_fall_back_to_a_regex_when_full_paths_match_more(tmp_path):
    def base():
        torch.manual_seed(0)
        return nn.ModuleDict({"a": nn.Linear(4, 4), "b": nn.ModuleDict({"a": nn.Linear(4, 4)})})
    model = base()
    model["a"] = LoRALinear(model["a"], r=1)  # only the top-level "a"; "b.a" also ends with ".a"
    config = save_peft_adapter(model, tmp_path)
    assert config["target_modules"] == "a"  # a regex, matched in full by PEFT
    assert [n for n, _ in lora_layers(load_peft_adapter(base(), tmp_path))] == ["a"]


def test_rank_and_alpha_patterns(tmp_path):
    model = make_base(n=3)
    apply_lora(model, ["0.q_proj", "1.q_proj", "2.q_proj", "0.v_proj"], r=2, lora_alpha=4)
    for name, r, alpha in [("1.q_proj", 4, 4), ("0.v_proj", 1, 3)]:
        model.get_submodule(name).__init__(model.get_submodule(name).base, r=r, lora_alpha=alpha)
    randomize(model)
    config = save_peft_adapter(model, tmp_path)
    assert (config["r"], config["lora_alpha"]) == (2, 4)
    assert config["rank_pattern"] == {"^1.q_proj": 4, "^0.v_proj": 1}
    assert config["alpha_pattern"] == {"^0.v_proj": 3}
    loaded = load_peft_adapter(make_base(n=3), tmp_path)
    assert {n: (l.r, l.lora_alpha) for n, l in lora_layers(loaded)} == \
        {n: (l.r, l.lora_alpha) for n, l in lora_layers(model)}
    x = torch.randn(4, 8)
    assert torch.equal(loaded(x), model(x))


def test_patterns_are_escaped_when_a_dot_would_match_another_layer(tmp_path):
    def base():
        torch.manual_seed(0)
        return nn.ModuleDict({"a": nn.ModuleDict({"b": nn.Linear(4, 4)}), "aXb": nn.Linear(4, 4),
                              "c": nn.Linear(4, 4), "d": nn.Linear(4, 4)})
    model = apply_lora(base(), ["c", "d"], r=1)
    apply_lora(model, ["a.b"], r=3)
    apply_lora(model, ["aXb"], r=2)
    config = save_peft_adapter(model, tmp_path)
    assert config["rank_pattern"] == {r"^a\.b": 3, "^aXb": 2}  # "^a.b" would also match "aXb"
    loaded = load_peft_adapter(base(), tmp_path)
    assert {n: l.r for n, l in lora_layers(loaded)} == {"a.b": 3, "aXb": 2, "c": 1, "d": 1}


@settings(max_examples=15)
@given(st.lists(st.tuples(st.integers(1, 6), st.sampled_from([1, 2, 8, 0.5])), min_size=4, max_size=4),
       st.booleans())
def test_property_any_ranks_and_alphas_round_trip(tmp_path_factory, specs, rslora):
    model = make_base()
    names = ["0.q_proj", "0.v_proj", "1.q_proj", "1.mlp.0"]
    for name, (r, alpha) in zip(names, specs):
        apply_lora(model, [name], r=r, lora_alpha=alpha, use_rslora=rslora)
    randomize(model)
    directory = tmp_path_factory.mktemp("adapter")
    save_peft_adapter(model, directory)
    loaded = load_peft_adapter(make_base(), directory)
    assert {n: (l.r, l.lora_alpha, l.scaling) for n, l in lora_layers(loaded)} == \
        {n: (l.r, l.lora_alpha, l.scaling) for n, l in lora_layers(model)}
    x = torch.randn(3, 8)
    assert torch.equal(loaded(x), model(x))


def test_merged_model_saves_the_same_adapter(tmp_path):
    model = adapted()
    save_peft_adapter(model, tmp_path / "a")
    merge_lora(model)
    save_peft_adapter(model, tmp_path / "b")
    assert (tmp_path / "a" / WEIGHTS_NAME).read_bytes() == (tmp_path / "b" / WEIGHTS_NAME).read_bytes()


def test_save_refusals(tmp_path):
    with pytest.raises(ValueError, match="no LoRALinear"):
        save_peft_adapter(make_base(), tmp_path)
    with pytest.raises(ValueError, match="task_type='causal'"):
        save_peft_adapter(adapted(), tmp_path, task_type="causal")
    model = apply_lora(make_base(), ["q_proj"], r=2, lora_dropout=0.1)
    apply_lora(model, ["v_proj"], r=2)
    with pytest.raises(ValueError, match="one lora_dropout for all layers"):
        save_peft_adapter(model, tmp_path)
    model = apply_lora(make_base(), ["q_proj"], r=2, use_rslora=True)
    apply_lora(model, ["v_proj"], r=2)
    with pytest.raises(ValueError, match="one use_rslora"):
        save_peft_adapter(model, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written by a refused save


# ---- refusals when loading: each names the field (or key) and the value ---------------------

def saved(tmp_path, **kwargs):
    save_peft_adapter(adapted(**kwargs), tmp_path)
    return tmp_path


def edit_config(directory, **changes):
    path = directory / CONFIG_NAME
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def edit_tensors(directory, change):
    tensors = safetensors_torch.load_file(str(directory / WEIGHTS_NAME))
    change(tensors)
    safetensors_torch.save_file(tensors, str(directory / WEIGHTS_NAME))


@pytest.mark.parametrize("field, value, message", [
    ("peft_type", "IA3", "peft_type='IA3'"),
    ("layer_replication", [[0, 1], [0, 2]], "layer_replication=.* is not supported"),
    ("bias", "some", "bias='some': PEFT's values"),
    ("init_lora_weights", "pissa_niter_4", "init_lora_weights='pissa_niter_4' .PiSSA by randomised"),
    ("lora_bias", True, "lora_bias=True"),
    ("init_lora_weights", "olora", "init_lora_weights='olora'"),
    ("target_modules", "all-linear", "target_modules='all-linear'"),
    ("target_modules", None, "target_modules=None"),
    ("some_future_option", 3, "some_future_option=3: a config field this package does not know"),
])
def test_unsupported_config_is_refused_by_name_and_value(tmp_path, field, value, message):
    directory = saved(tmp_path)
    edit_config(directory, **{field: value})
    model = make_base()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=message):
        load_peft_adapter(model, directory)
    assert not lora_layers(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_off_values_and_ignored_fields_are_accepted(tmp_path):
    directory = saved(tmp_path)
    edit_config(directory, layers_to_transform=None, loftq_config={}, peft_version="0.21.2",
                fan_in_fan_out=True, megatron_core="megatron.core", eva_config=None)
    assert len(lora_layers(load_peft_adapter(make_base(), directory))) == 4


def randomize_magnitudes(model, seed=3):
    """DoRA's m away from its initial value (the row norms of W0 + s·BA), as training moves it."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_magnitude_vector.mul_(torch.rand(layer.out_features) + 0.5)  # (out,)
    return model


def test_dora_round_trip_here_is_exact(tmp_path):
    model = randomize_magnitudes(adapted(use_dora=True, lora_alpha=4))
    config = save_peft_adapter(model, tmp_path)
    assert config["use_dora"] is True
    tensors = safetensors_torch.load_file(str(tmp_path / WEIGHTS_NAME))
    assert {k: tuple(v.shape) for k, v in tensors.items() if "magnitude" in k} == {
        f"base_model.model.{i}.{m}.lora_magnitude_vector": (out,)
        for i in (0, 1) for m, out in (("q_proj", 8), ("v_proj", 6))}
    loaded = load_peft_adapter(make_base(), tmp_path)
    x = torch.randn(5, 8)
    assert torch.equal(loaded(x), model(x))
    for (_, a), (_, b) in zip(lora_layers(loaded), lora_layers(model), strict=True):
        assert a.use_dora and torch.equal(a.lora_magnitude_vector, b.lora_magnitude_vector)
        # loaded as saved, not re-initialised to the row norms of W0 + s·BA
        assert not torch.allclose(a.lora_magnitude_vector, a.dora_weight_norm())
    trainable = {n for n, p in loaded.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n.rpartition(".")[2] for n in trainable} == {"lora_A", "lora_B",
                                                          "lora_magnitude_vector"}


def test_mixed_dora_and_lora_layers_are_refused(tmp_path):
    model = apply_lora(make_base(), ["q_proj"], r=2, use_dora=True)
    apply_lora(model, ["v_proj"], r=2)
    with pytest.raises(ValueError, match="one use_dora for all layers"):
        save_peft_adapter(model, tmp_path)
    assert not any(tmp_path.iterdir())
    save_peft_adapter(adapted(use_dora=True), tmp_path)  # a DoRA file with one magnitude missing
    edit_tensors(tmp_path, lambda t: t.pop("base_model.model.1.v_proj.lora_magnitude_vector"))
    model = make_base()
    with pytest.raises(ValueError, match=r"'1.v_proj' lacks \['base_model.model.1.v_proj."
                                         r"lora_magnitude_vector'\] \(use_dora is true"):
        load_peft_adapter(model, tmp_path)
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("change, message", [
    (lambda t: t.pop("base_model.model.0.q_proj.lora_B.weight"), r"lacks \['base_model.model.0.q_proj.lora_B"),
    (lambda t: t.update({"base_model.model.0.q_proj.lora_embedding_A": torch.zeros(2, 8)}),
     "embedding LoRA"),
    (lambda t: t.update({"base_model.model.0.q_proj.lora_magnitude_vector": torch.zeros(8)}),
     "DoRA although use_dora is false"),
    (lambda t: t.update({"model.0.q_proj.lora_A.weight": torch.zeros(2, 8)}), "unexpected tensor"),
    (lambda t: t.update({"base_model.model.0.q_proj.lora_A.weight": torch.zeros(3, 8)}),
     r"has shape \(3, 8\), expected \(2, 8\)"),
    (lambda t: t.update({"base_model.model.9.q_proj.lora_A.weight": torch.zeros(2, 8),
                         "base_model.model.9.q_proj.lora_B.weight": torch.zeros(8, 2)}),
     "names module '9.q_proj', which the model does not have"),
    (lambda t: t.update({"base_model.model.0.k_proj.lora_A.weight": torch.zeros(2, 8),
                         "base_model.model.0.k_proj.lora_B.weight": torch.zeros(8, 2)}),
     r"does not select: \['0.k_proj'\]"),
    (lambda t: [t.pop(f"base_model.model.1.v_proj.lora_{ab}.weight") for ab in "AB"],
     r"without tensors in the file: \['1.v_proj'\]"),
])
def test_bad_tensor_files_are_refused_and_change_nothing(tmp_path, change, message):
    directory = saved(tmp_path)
    edit_tensors(directory, change)
    model = make_base()
    with pytest.raises(ValueError, match=message):
        load_peft_adapter(model, directory)
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())


def test_wrong_layer_types_are_named(tmp_path):
    class Conv1D(nn.Module):  # the layout of transformers.pytorch_utils.Conv1D: weight (in, out)
        def __init__(self, nf, nx):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(nx, nf))

    directory = saved(tmp_path, target_modules=["q_proj"])
    for module, message in [
            (nn.Embedding(8, 8), "'0.q_proj' is an nn.Embedding, whose PEFT keys are lora_embedding_A"),
            (nn.Conv1d(8, 8, 1), r"lora_A.weight has shape \(2, 8\), expected \(2, 8, 1\)"),
            (Conv1D(8, 8), r"transformers Conv1D .* nn.Linear holding weight.T"),
            (nn.Conv3d(8, 8, 1), "is a Conv3d: LoRA from a PEFT file goes onto nn.Linear, nn.Embedding"),
            (nn.Sequential(nn.Linear(8, 8)), "is a Sequential: LoRA from a PEFT file goes onto")]:
        model = make_base()
        model[0].q_proj = module
        with pytest.raises(ValueError, match=message):
            load_peft_adapter(model, directory)
    with pytest.raises(ValueError, match="'0.q_proj' already has LoRA"):
        load_peft_adapter(apply_lora(make_base(), ["q_proj"], r=2), directory)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        load_peft_adapter(make_base(), tmp_path)
    directory = saved(tmp_path)
    (directory / WEIGHTS_NAME).rename(directory / "adapter_model.bin")
    with pytest.raises(FileNotFoundError, match="found adapter_model.bin"):
        load_peft_adapter(make_base(), directory)


def test_apply_lora_names_conv1d_and_the_fix():
    class Conv1D(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8, 24))

    model = nn.Sequential(nn.ModuleDict({"c_attn": Conv1D()}), nn.Linear(8, 8))
    with pytest.raises(ValueError, match=r"match \['0.c_attn'\], transformers Conv1D.*"
                                         r"\(in_features, out_features\).*fan_in_fan_out=True"):
        apply_lora(model, ["c_attn"])


# ---- with real PEFT and transformers (tiny models built from configs; nothing downloaded) ----

# PEFT 0.21.2 reads transformers 5's deprecated `is_gradient_checkpointing` in PeftModel.__init__.
peft_warning = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    state = transformers.LlamaForCausalLM(config).state_dict()

    def fresh():
        model = transformers.LlamaForCausalLM(config)
        model.load_state_dict(state)
        return model.eval()
    return transformers, peft, fresh


@peft_warning
def test_peft_files_load_here_and_give_peft_outputs(hf, tmp_path):
    _, peft, fresh = hf
    torch.manual_seed(1)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                             rank_pattern={"v_proj": 2}, alpha_pattern={"layers.1.mlp.down_proj": 3},
                             init_lora_weights=False, task_type="CAUSAL_LM")
    reference = peft.get_peft_model(fresh(), config).eval()
    reference.save_pretrained(tmp_path)
    ids = torch.randint(0, 64, (2, 12))
    model = load_peft_adapter(fresh(), tmp_path).eval()
    ranks = {n: (l.r, l.lora_alpha) for n, l in lora_layers(model)}
    assert ranks["model.layers.0.self_attn.v_proj"] == (2, 8)
    assert ranks["model.layers.1.mlp.down_proj"] == (4, 3)
    assert ranks["model.layers.0.mlp.down_proj"] == (4, 8)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reference(ids).logits, atol=1e-6, rtol=0)
        base_logits = fresh()(ids).logits
        assert not torch.allclose(model(ids).logits, base_logits, atol=1e-3)


@peft_warning
def test_our_files_load_in_peft_and_give_our_outputs(hf, tmp_path):
    _, peft, fresh = hf
    model = randomize(apply_lora(fresh(), ["q_proj", "v_proj"], r=4, lora_alpha=8, use_rslora=True))
    apply_lora(model, ["o_proj"], r=2, lora_alpha=5, use_rslora=True)
    randomize(model, seed=2)
    save_peft_adapter(model, tmp_path, task_type="CAUSAL_LM")
    reference = peft.PeftModel.from_pretrained(fresh(), tmp_path).eval()
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        assert torch.allclose(reference(ids).logits, model.eval()(ids).logits, atol=1e-6, rtol=0)
    assert reference.peft_config["default"].rank_pattern == {
        f"^model.layers.{i}.self_attn.o_proj": 2 for i in (0, 1)}
    # Saving the adapter again with PEFT gives the very same tensor file, byte for byte.
    reference.save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / WEIGHTS_NAME).read_bytes() == (tmp_path / WEIGHTS_NAME).read_bytes()


def peft_module_path(name):
    """PEFT's parameter name -> (module path in the unwrapped model, our parameter name)."""
    name = name.removeprefix("base_model.model.")
    for ours in ("lora_A", "lora_B", "lora_magnitude_vector"):
        if f".{ours}." in name:
            return name.partition(f".{ours}.")[0], ours
    raise AssertionError(name)


@peft_warning
def test_peft_dora_files_load_here_and_give_peft_outputs(hf, tmp_path):
    _, peft, fresh = hf
    torch.manual_seed(1)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                             rank_pattern={"v_proj": 2}, use_dora=True, task_type="CAUSAL_LM")
    reference = peft.get_peft_model(fresh(), config)
    ids = torch.randint(0, 64, (2, 12))
    optimizer = torch.optim.Adam([p for p in reference.parameters() if p.requires_grad], lr=0.05)
    reference(ids, labels=ids).loss.backward()  # one training step: A, B and m all move
    optimizer.step()
    reference.eval().save_pretrained(tmp_path)
    model = load_peft_adapter(fresh(), tmp_path).eval()
    theirs = {peft_module_path(n): p for n, p in reference.named_parameters() if p.requires_grad}
    ours = {(n.rpartition(".")[0], n.rpartition(".")[2]): p
            for n, p in model.named_parameters() if p.requires_grad}
    assert ours.keys() == theirs.keys()  # the same parameters train, magnitudes included
    assert sum(k[1] == "lora_magnitude_vector" for k in ours) == 6
    for key, p in ours.items():
        assert torch.equal(p, theirs[key].view(p.shape)), key  # m as trained, not re-initialised
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reference(ids).logits, atol=1e-5, rtol=0)
        assert not torch.allclose(model(ids).logits, fresh()(ids).logits, atol=1e-3)
    # Saving it again here gives PEFT's keys and tensors.
    save_peft_adapter(model, tmp_path / "ours")
    a = safetensors_torch.load_file(str(tmp_path / WEIGHTS_NAME))
    b = safetensors_torch.load_file(str(tmp_path / "ours" / WEIGHTS_NAME))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@peft_warning
def test_our_dora_files_load_in_peft_and_give_our_outputs(hf, tmp_path):
    _, peft, fresh = hf
    model = randomize(apply_lora(fresh(), ["q_proj", "v_proj"], r=4, lora_alpha=8, use_dora=True))
    apply_lora(model, ["o_proj"], r=2, lora_alpha=5, use_dora=True)
    randomize_magnitudes(randomize(model, seed=2))
    save_peft_adapter(model, tmp_path, task_type="CAUSAL_LM")
    reference = peft.PeftModel.from_pretrained(fresh(), tmp_path).eval()
    assert reference.peft_config["default"].use_dora is True
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        assert torch.allclose(reference(ids).logits, model.eval()(ids).logits, atol=1e-5, rtol=0)
        assert not torch.allclose(model(ids).logits, fresh()(ids).logits, atol=1e-3)
    reference.save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / WEIGHTS_NAME).read_bytes() == (tmp_path / WEIGHTS_NAME).read_bytes()


@peft_warning
def test_gpt2_conv1d_adapter_loads_into_the_linear_version(hf, tmp_path):
    transformers, peft, _ = hf
    config = transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=32, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(config).eval()
    state = copy.deepcopy(gpt2.state_dict())
    reference = peft.get_peft_model(gpt2, peft.LoraConfig(
        r=2, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False)).eval()
    reference.save_pretrained(tmp_path)
    mine = transformers.GPT2LMHeadModel(config).eval()
    mine.load_state_dict(state)
    with pytest.raises(ValueError, match="transformers Conv1D"):
        load_peft_adapter(mine, tmp_path)
    for block in mine.transformer.h:  # Conv1D (weight (in, out)) -> nn.Linear (weight (out, in))
        conv = block.attn.c_attn
        linear = nn.Linear(*conv.weight.shape)
        with torch.no_grad():
            linear.weight.copy_(conv.weight.T)
            linear.bias.copy_(conv.bias)
        block.attn.c_attn = linear
    load_peft_adapter(mine, tmp_path)
    ids = torch.randint(0, 32, (2, 8))
    with torch.no_grad():
        assert torch.allclose(mine(ids).logits, reference(ids).logits, atol=1e-6, rtol=0)


# ---- issue 21: several architectures, PiSSA, biases, heads, filters, mixed precision --------

def _tiny_configs(transformers):
    """Tiny configs of five architectures: (model class, config, LoRA targets, task_type, input)."""
    common = dict(vocab_size=64, hidden_size=32, num_attention_heads=4, max_position_embeddings=32)
    return {
        "llama": (transformers.LlamaForCausalLM, transformers.LlamaConfig(
            intermediate_size=48, num_hidden_layers=2, num_key_value_heads=2, **common),
            ["q_proj", "v_proj", "down_proj"], "CAUSAL_LM"),
        "qwen2": (transformers.Qwen2ForCausalLM, transformers.Qwen2Config(
            intermediate_size=48, num_hidden_layers=1, num_key_value_heads=2, **common),
            ["q_proj", "o_proj", "up_proj"], "CAUSAL_LM"),
        "t5": (transformers.T5ForConditionalGeneration, transformers.T5Config(
            vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=1, num_heads=4,
            decoder_start_token_id=0), ["q", "v", "wo"], "SEQ_2_SEQ_LM"),
        "bert-seq-cls": (transformers.BertForSequenceClassification, transformers.BertConfig(
            intermediate_size=48, num_hidden_layers=1, num_labels=3, **common),
            ["query", "value", "dense"], "SEQ_CLS"),
    }


def _fresh(transformers, name, seed=0):
    cls, config, targets, task = _tiny_configs(transformers)[name]
    torch.manual_seed(seed)
    return cls(config).eval(), targets, task


def _logits(model, ids):
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            return model(input_ids=ids, decoder_input_ids=ids[:, :5]).logits
        return model(input_ids=ids).logits


def _perturb_trainable(model, seed=5, scale=0.1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * scale)
    return model


ARCHS = ["llama", "qwen2", "t5", "bert-seq-cls"]


@peft_warning
@pytest.mark.parametrize("arch", ARCHS)
def test_architectures_round_trip_both_directions_with_peft(hf, tmp_path, arch):
    transformers, peft, _ = hf
    ids = torch.randint(0, 64, (2, 9))
    # ours -> PEFT (with trained biases in the adapted layers; the SEQ_CLS head by task_type)
    ours, targets, task = _fresh(transformers, arch)
    apply_lora(ours, targets, r=2, lora_alpha=4, init_lora_weights=False)
    from lora_helpers import mark_only_lora_as_trainable
    mark_only_lora_as_trainable(ours, "lora_only")
    if task == "SEQ_CLS":
        ours.classifier.requires_grad_(True)
    _perturb_trainable(ours)
    save_peft_adapter(ours, tmp_path / "ours", task_type=task)
    theirs = peft.PeftModel.from_pretrained(_fresh(transformers, arch)[0], tmp_path / "ours").eval()
    assert (_logits(theirs, ids) - _logits(ours, ids)).abs().max() <= 1e-5
    assert (_logits(_fresh(transformers, arch)[0], ids) - _logits(ours, ids)).abs().max() > 1e-3
    # PEFT -> ours (bias="all": every bias trains and is saved)
    reference = peft.get_peft_model(_fresh(transformers, arch)[0], peft.LoraConfig(
        r=2, lora_alpha=4, target_modules=targets, init_lora_weights=False, bias="all",
        task_type=task))
    _perturb_trainable(reference, seed=6).eval().save_pretrained(tmp_path / "peft")
    loaded = load_peft_adapter(_fresh(transformers, arch)[0], tmp_path / "peft").eval()
    assert (_logits(loaded, ids) - _logits(reference, ids)).abs().max() <= 1e-5
    ours_trainable = sum(p.numel() for p in loaded.parameters() if p.requires_grad)
    assert ours_trainable == sum(p.numel() for p in reference.parameters() if p.requires_grad)


@peft_warning
def test_pissa_round_trips_both_directions_with_peft(hf, tmp_path):
    transformers, peft, fresh = hf
    ids = torch.randint(0, 64, (2, 12))
    ours = apply_lora(fresh(), ["q_proj", "v_proj"], r=4, lora_alpha=8, init_lora_weights="pissa")
    _perturb_trainable(ours, scale=0.05)  # "training" moves A and B away from the SVD
    config = save_peft_adapter(ours, tmp_path / "ours", task_type="CAUSAL_LM")
    assert config["init_lora_weights"] == "pissa"
    theirs = peft.PeftModel.from_pretrained(fresh(), tmp_path / "ours").eval()
    assert (_logits(theirs, ids) - _logits(ours, ids)).abs().max() <= 1e-5
    # PEFT's PiSSA file loads here; the residual base weights are PEFT's (the same SVD)
    reference = peft.get_peft_model(fresh(), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights="pissa"))
    _perturb_trainable(reference, scale=0.05).eval().save_pretrained(tmp_path / "peft")
    loaded = load_peft_adapter(fresh(), tmp_path / "peft").eval()
    assert (_logits(loaded, ids) - _logits(reference, ids)).abs().max() <= 1e-5
    residual = loaded.model.layers[0].self_attn.q_proj.base.weight
    peft_residual = reference.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    assert torch.allclose(residual, peft_residual, atol=1e-6, rtol=0)
    assert all(layer.init_lora_weights == "pissa" for _, layer in lora_layers(loaded))


def test_mixed_pissa_and_plain_layers_are_refused_by_name(tmp_path):
    model = apply_lora(make_base(), ["q_proj"], r=2, init_lora_weights="pissa")
    apply_lora(model, ["v_proj"], r=2)
    with pytest.raises(ValueError, match=r"layers \['0.q_proj', '1.q_proj'\] were initialised by "
                                         r"PiSSA and \['0.v_proj', '1.v_proj'\] were not"):
        save_peft_adapter(model, tmp_path)
    assert not any(tmp_path.iterdir())


def test_trained_head_and_biases_round_trip_here(tmp_path):
    from lora_helpers import mark_only_lora_as_trainable
    model = adapted()
    mark_only_lora_as_trainable(model, "all")
    model[1].mlp[2].requires_grad_(True)  # a trained non-LoRA module: modules_to_save
    _perturb_trainable(model)
    config = save_peft_adapter(model, tmp_path)
    assert (config["bias"], config["modules_to_save"]) == ("all", ["1.mlp.2"])
    keys = set(safetensors_torch.load_file(str(tmp_path / WEIGHTS_NAME)))
    assert {"base_model.model.0.q_proj.base_layer.bias", "base_model.model.0.k_proj.bias",
            "base_model.model.1.mlp.2.weight", "base_model.model.1.mlp.2.bias"} <= keys
    loaded = load_peft_adapter(make_base(), tmp_path)
    x = torch.randn(5, 8)
    assert torch.equal(loaded(x), model(x))
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == \
        {n for n, p in model.named_parameters() if p.requires_grad}


def test_a_trained_adapted_weight_is_refused_by_name(tmp_path):
    model = adapted()
    model[0].q_proj.base.weight.requires_grad_(True)
    with pytest.raises(ValueError, match=r"modules \['0.q_proj.base'\] have LoRA"):
        save_peft_adapter(model, tmp_path)


@peft_warning
@pytest.mark.filterwarnings("ignore:Setting `save_embedding_layers`:UserWarning")
def test_peft_filters_rank_above_size_and_lm_head(hf, tmp_path):
    transformers, peft, fresh = hf
    ids = torch.randint(0, 64, (2, 12))
    cases = {  # PEFT's module filters; r=40 above lm_head's 32 inputs; lm_head's base weight saved
        "filters": dict(target_modules=["q_proj", "v_proj", "o_proj"], layers_to_transform=[1],
                        layers_pattern="layers", exclude_modules=["o_proj"]),
        "lm_head": dict(target_modules=["q_proj", "lm_head"], rank_pattern={"lm_head": 40}),
    }
    for name, kwargs in cases.items():
        reference = peft.get_peft_model(fresh(), peft.LoraConfig(r=2, init_lora_weights=False,
                                                                 **kwargs)).eval()
        reference.save_pretrained(tmp_path / name)
        loaded = load_peft_adapter(fresh(), tmp_path / name).eval()
        assert (_logits(loaded, ids) - _logits(reference, ids)).abs().max() <= 1e-5, name
    assert [n for n, _ in lora_layers(load_peft_adapter(fresh(), tmp_path / "filters"))] == [
        "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    other = fresh()
    with torch.no_grad():
        other.lm_head.weight.add_(0.01)
    with pytest.raises(ValueError, match="lm_head.base_layer.weight.*save_embedding_layers=False"):
        load_peft_adapter(other, tmp_path / "lm_head")
    assert not lora_layers(other)


@peft_warning
def test_bf16_base_keeps_fp32_adapters_like_peft(hf, tmp_path):
    _, peft, fresh = hf
    ids = torch.randint(0, 64, (2, 12))
    reference = peft.get_peft_model(fresh().to(torch.bfloat16), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)).eval()
    assert {p.dtype for n, p in reference.named_parameters() if "lora_" in n} == {torch.float32}
    reference.save_pretrained(tmp_path)
    loaded = load_peft_adapter(fresh().to(torch.bfloat16), tmp_path).eval()
    assert {layer.lora_A.dtype for _, layer in lora_layers(loaded)} == {torch.float32}
    ours = apply_lora(fresh().to(torch.bfloat16), ["q_proj"], r=2)
    assert {layer.lora_B.dtype for _, layer in lora_layers(ours)} == {torch.float32}
    # The same casts as PEFT: the same bf16 logits
    assert torch.equal(_logits(loaded, ids), _logits(reference, ids))


@pytest.mark.parametrize("task_type, head", [("SEQ_CLS", "score"), ("TOKEN_CLS", "classifier"),
                                             ("QUESTION_ANS", "qa_outputs")])
def test_task_heads_are_saved_as_modules_to_save_even_untrained(tmp_path, task_type, head):
    """PEFT's PeftModelFor<task> adds these heads to modules_to_save and fails to load without them."""
    model = adapted()
    model.add_module(head, nn.Linear(8, 2))
    getattr(model, head).requires_grad_(False)  # untrained: PEFT still needs it in the file
    config = save_peft_adapter(model, tmp_path, task_type=task_type)
    assert config["modules_to_save"] == [head]
    keys = set(safetensors_torch.load_file(str(tmp_path / WEIGHTS_NAME)))
    assert {f"base_model.model.{head}.weight", f"base_model.model.{head}.bias"} <= keys
    fresh = make_base()
    fresh.add_module(head, nn.Linear(8, 2))
    with torch.no_grad():
        getattr(fresh, head).weight.zero_()
    load_peft_adapter(fresh, tmp_path)
    assert torch.equal(getattr(fresh, head).weight, getattr(model, head).weight)
    assert getattr(fresh, head).weight.requires_grad  # modules_to_save train, as in PEFT
    edit_tensors(tmp_path, lambda t: t.pop(f"base_model.model.{head}.bias"))
    other = make_base()
    other.add_module(head, nn.Linear(8, 2))
    with pytest.raises(ValueError, match=rf"selects '{head}', but the file lacks"):
        load_peft_adapter(other, tmp_path)  # a file without the head is refused by name
    assert not lora_layers(other)


@settings(max_examples=40, deadline=None)
@given(name=st.lists(st.sampled_from(["model", "layers", "h", "0", "1", "2", "q_proj", "v_proj",
                                      "experts"]), min_size=1, max_size=5).map(".".join),
       indexes=st.sampled_from([None, [1], [0, 2], 1]),
       pattern=st.sampled_from([None, "layers", ["h", "layers"]]),
       exclude=st.sampled_from([None, ["v_proj"], r".*\.1\..*"]),
       targets=st.sampled_from([["q_proj", "v_proj"], r".*_proj", ["layers.0.q_proj"]]))
def test_property_module_selection_agrees_with_peft(name, indexes, pattern, exclude, targets):
    """PEFT's check_target_module_exists and ours pick the same module names."""
    peft = pytest.importorskip("peft")
    from peft.tuners.tuners_utils import check_target_module_exists
    from lora_helpers.peft_keys import targeted as _targeted
    options = dict(target_modules=targets, layers_to_transform=indexes, layers_pattern=pattern,
                   exclude_modules=exclude)
    # configs PEFT's LoraConfig refuses: index filters with a regex, a pattern without indexes
    assume(not (isinstance(targets, str) and (indexes is not None or pattern is not None)))
    assume(not (pattern and indexes is None))
    config = peft.LoraConfig(**options)
    assert bool(_targeted(options, name)) == bool(check_target_module_exists(config, name)), name


def test_rank_pattern_keys_match_whole_name_segments():
    """PEFT's ``(.*\\.)?(key)$``: "q_proj" matches "q_proj" and "a.q_proj", never "xq_proj"."""
    from lora_helpers.peft_keys import pattern_key as _pattern_key
    patterns = {"q_proj": 4}
    assert _pattern_key(patterns, "q_proj") == "q_proj"
    assert _pattern_key(patterns, "layers.0.q_proj") == "q_proj"
    assert _pattern_key(patterns, "layers.0.xq_proj") is None
    assert _pattern_key(patterns, "xq_proj") is None
