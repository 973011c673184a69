"""The pretrained digits classifier that notebooks 03–06 and 08 adapt: ``pretrain_digits_classifier``
trains it with ``training.train`` and keeps the weights on disk, like a downloaded checkpoint."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data import DigitsSplit, load_digits_split
from .models import TinyTransformerClassifier
from .training import History, show_progress, train

__all__ = ["pretrain_digits_classifier"]


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


def pretrain_digits_classifier(seed: int = 0, epochs: int = 20, lr: float = 3e-3, batch_size: int = 64,
                               progress: bool = False, cache: bool = True, **model_kwargs
                               ) -> tuple[TinyTransformerClassifier, DigitsSplit, History]:
    """Build a ``TinyTransformerClassifier`` and train it on the original digits.

    The starting point of notebooks 03–06 and 08: the "pretrained model" that is later adapted.
    The model (initialised with ``torch.manual_seed(seed)``), the split (``load_digits_split(seed=0)``)
    and the training order are all seeded, so one machine reproduces it exactly.

    Like a downloaded checkpoint, the trained weights are kept on disk after the first call
    (``~/.cache/lora_helpers``; the environment variable ``LORA_HELPERS_CACHE`` names another
    folder, or ``off``), so the next notebook that asks for the same model loads it in a fraction
    of a second instead of training it again (about 10 s). The file is named by everything the
    weights depend on: the arguments, the training images and labels, this package's source,
    torch's version, the number of threads and the CPU's instruction set; a loaded model is
    bit-identical to a trained one, and the global random generator is left in the same state.
    ``cache=False`` always trains.

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
    folder = _cache_dir() if cache else None
    path = None if folder is None else folder / "digits-{}.pt".format(
        _pretrain_key(split, seed=seed, epochs=epochs, lr=lr, batch_size=batch_size, **model_kwargs))
    if path and path.is_file():
        try:
            stored = torch.load(path, weights_only=True)
            model.load_state_dict(stored["model"])
            if show_progress(progress):  # say that the base was loaded, not trained (a bar, as training draws)
                for _ in tqdm(range(1), desc=f"pretrained base loaded from {path.parent}", leave=False, disable=False):
                    pass
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
