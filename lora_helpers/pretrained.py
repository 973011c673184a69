"""The pretrained digits classifier that notebooks 03–06 and 08 adapt: ``pretrain_digits_classifier``
trains it with ``training.train`` and keeps the weights on disk, like a downloaded checkpoint.

The notebooks' own recipes (``seed=0``) ship with the package as safetensors files in
``lora_helpers/weights`` (``scripts/build_pretrained_weights.py`` trains and writes them), so a
fresh machine starts from the same base as the machine that executed the notebooks, without
training it first (a downloaded checkpoint that is never downloaded: nothing here uses a network).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .data import DigitsSplit, load_digits_split
from .models import TinyTransformerClassifier
from .training import History, show_progress, train

__all__ = ["pretrain_digits_classifier"]

WEIGHTS_DIR = Path(__file__).parent / "weights"
# The modules that decide what a pretraining produces (the model, the loop, the data, their checks):
# a shipped file records their hash and is used only while they are unchanged.
_TRAINING_SOURCES = ("_checks.py", "data.py", "models.py", "training.py")


def _cache_dir() -> Path | None:
    """Where ``pretrain_digits_classifier`` keeps its weights; ``None`` when caching is off."""
    setting = os.environ.get("LORA_HELPERS_CACHE", "").strip()
    if setting.lower() in ("0", "off", "false", "no"):
        return None
    if setting:
        return Path(setting)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lora_helpers"


def _pretrain_key(split: DigitsSplit, **settings) -> str:
    """A name for one pretraining: its settings, the training images and labels themselves (another
    scikit-learn could split them differently), this package's source code, torch's version, the
    number of threads and the CPU's instruction set (each can change the trained weights)."""
    digest = hashlib.sha256(repr(sorted(settings.items())).encode())
    digest.update(split.x_train.contiguous().numpy().tobytes())  # (n, 8, 8) float32
    digest.update(split.y_train.contiguous().numpy().tobytes())  # (n,) int64
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    digest.update(f"{torch.__version__} {torch.get_num_threads()} "
                  f"{torch.backends.cpu.get_cpu_capability()}".encode())
    return digest.hexdigest()[:24]


def shipped_weights_name(**settings) -> str:
    """The file name of a recipe's shipped weights: its settings in order, readable, e.g.
    ``digits-batch_size64-epochs20-lr0.003-seed0.safetensors``."""
    return "digits-" + "-".join(f"{key}{value}" for key, value in sorted(settings.items())) + ".safetensors"


def _provenance(split: DigitsSplit) -> dict[str, str]:
    """Hashes of what a pretraining's weights depend on besides its settings: the training images and
    labels, and the source of the modules in ``_TRAINING_SOURCES``."""
    data = hashlib.sha256(split.x_train.contiguous().numpy().tobytes())  # (n, 8, 8) float32
    data.update(split.y_train.contiguous().numpy().tobytes())  # (n,) int64
    source = hashlib.sha256()
    for name in _TRAINING_SOURCES:
        source.update((Path(__file__).parent / name).read_bytes())
    return {"data_sha256": data.hexdigest(), "source_sha256": source.hexdigest()}


def save_shipped_weights(model: TinyTransformerClassifier, split: DigitsSplit, history: History,
                         folder: Path = WEIGHTS_DIR, **settings) -> Path:
    """Write a pretraining's weights and history as ``folder / shipped_weights_name(**settings)``
    (what ``scripts/build_pretrained_weights.py`` does for the notebooks' recipes). The metadata
    records the settings, the provenance hashes, the training history and where it was trained."""
    metadata = {"settings": json.dumps(settings, sort_keys=True), **_provenance(split),
                "loss": json.dumps(history.loss), "train_accuracy": json.dumps(history.train_accuracy),
                "seconds": json.dumps(history.seconds),
                "trained_with": f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
                                f"CPU capability {torch.backends.cpu.get_cpu_capability()}"}
    path = Path(folder) / shipped_weights_name(**settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(path), metadata=metadata)
    return path


def load_shipped_weights(model: TinyTransformerClassifier, split: DigitsSplit, settings: dict) -> History | None:
    """Load the shipped weights of the recipe ``settings`` (``seed``, ``epochs``, ``lr``,
    ``batch_size`` and the model's keyword arguments) into ``model``; ``None``, with ``model``
    unchanged, when none ship or when they were trained on other data (``split.x_train``,
    ``split.y_train``) or by other training code than this package's."""
    path = WEIGHTS_DIR / shipped_weights_name(**settings)
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    if any(metadata.get(key) != value for key, value in _provenance(split).items()):
        return None
    model.load_state_dict(load_file(str(path)))
    return History(loss=json.loads(metadata["loss"]), train_accuracy=json.loads(metadata["train_accuracy"]),
                   seconds=json.loads(metadata["seconds"]))


def _say_loaded(where: Path, progress: bool) -> None:
    """A learner who asked for progress sees where the base came from (a bar, as training draws)."""
    if show_progress(progress):
        for _ in tqdm(range(1), desc=f"pretrained base loaded from {where}", leave=False, disable=False):
            pass


def pretrain_digits_classifier(seed: int = 0, epochs: int = 20, lr: float = 3e-3, batch_size: int = 64,
                               progress: bool = False, cache: bool = True, **model_kwargs
                               ) -> tuple[TinyTransformerClassifier, DigitsSplit, History]:
    """Build a ``TinyTransformerClassifier`` and train it on the original digits.

    The starting point of notebooks 03–06 and 08: the "pretrained model" that is later adapted.
    The model (initialised with ``torch.manual_seed(seed)``), the split (``load_digits_split(seed=0)``)
    and the training order are all seeded, so one machine reproduces it exactly.

    The notebooks' recipes (``seed=0`` with the settings they pass) ship with the package
    (``lora_helpers/weights``, trained on one thread by ``scripts/build_pretrained_weights.py``) and
    are loaded from there, while the training code and data they were made with are unchanged.
    Any other recipe is trained, and, like a downloaded checkpoint, kept on disk after the first call
    (``~/.cache/lora_helpers``; the environment variable ``LORA_HELPERS_CACHE`` names another
    folder, or ``off``), so the next notebook that asks for the same model loads it in a fraction
    of a second instead of training it again (about 10 s). The file is named by everything the
    weights depend on: the arguments, the training images and labels, this package's source,
    torch's version, the number of threads and the CPU's instruction set; a loaded model is
    bit-identical to a trained one, and the global random generator is left in the same state.
    ``cache=False`` always trains (on another CPU the result can differ from the shipped weights in
    the last digits).

    Args:
        seed, epochs, lr, batch_size: the recipe (``train``'s AdamW, no weight decay).
        model_kwargs: passed to ``TinyTransformerClassifier`` (e.g. ``d_model=128, patch_size=4``).

    Returns:
        ``(model in eval mode, the original-digits split, training history)``; for a loaded
        model the history holds the stored losses, accuracies and seconds, and no optimizer.
    """
    split = load_digits_split()
    torch.manual_seed(seed)
    model = TinyTransformerClassifier(**model_kwargs)  # draws from the global generator: always
    settings = dict(seed=seed, epochs=epochs, lr=lr, batch_size=batch_size, **model_kwargs)
    if cache:
        shipped = load_shipped_weights(model, split, settings)
        if shipped is not None:
            _say_loaded(WEIGHTS_DIR, progress)
            return model.eval(), split, shipped
    folder = _cache_dir() if cache else None
    path = None if folder is None else folder / f"digits-{_pretrain_key(split, **settings)}.pt"
    if path and path.is_file():
        try:
            stored = torch.load(path, weights_only=True)
            model.load_state_dict(stored["model"])
            _say_loaded(path.parent, progress)
            return model.eval(), split, History(loss=stored["loss"], train_accuracy=stored["train_accuracy"],
                                                seconds=stored["seconds"])
        except Exception:  # an unreadable or foreign file: train instead (and replace it)
            torch.manual_seed(seed)
            model = TinyTransformerClassifier(**model_kwargs)
    history = train(model, split.x_train, split.y_train, epochs=epochs, lr=lr, seed=seed,
                    batch_size=batch_size, progress=progress)
    if path:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save({"model": model.state_dict(), "loss": history.loss,
                        "train_accuracy": history.train_accuracy, "seconds": history.seconds}, partial)
            os.replace(partial, path)  # atomic: a parallel reader sees all of it or nothing
        except OSError:
            pass  # a read-only home: no cache, nothing else changes
    return model, split, history
