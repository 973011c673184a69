"""Train the notebooks' pretrained digits classifiers and write them into ``lora_helpers/weights``.

Usage (from the repository root; about 30 s on one core):

    python scripts/build_pretrained_weights.py            # train and write every recipe below
    python scripts/build_pretrained_weights.py --check    # only say which files are missing or stale

``pretrain_digits_classifier`` loads these files instead of training when the notebooks ask for these
recipes, so a fresh machine starts from the very base the notebooks were executed with. Run it
after changing anything in ``lora_helpers``'s ``_checks.py``, ``data.py``, ``models.py`` or
``training.py`` (the shipped files record a hash of them, and are ignored once it no longer
matches; ``tests/test_pretrained.py`` fails then), and re-execute notebooks 03–06 and 08.
Training runs on one thread, as in the notebooks (``torch.set_num_threads(1)`` in their setup cell).
"""

from __future__ import annotations

import argparse
import sys

import torch

from lora_helpers.data import load_digits_split
from lora_helpers.models import TinyTransformerClassifier
from lora_helpers.pretrained import (WEIGHTS_DIR, load_shipped_weights, pretrain_digits_classifier,
                                     save_shipped_weights, shipped_weights_name)

# The calls in the notebooks, with their SEED = 0 (a rerun with another SEED trains its own base).
RECIPES = {
    "03, 04, 06, 08 (QLoRA)": dict(seed=0, epochs=20, lr=3e-3, batch_size=64),
    "05": dict(seed=0, epochs=20, lr=3e-3, batch_size=128, d_model=128, patch_size=4),
    "08 (one block)": dict(seed=0, epochs=10, lr=3e-3, batch_size=64, d_model=64, n_heads=4,
                           n_layers=1, patch_size=4, mlp_ratio=2),
}


def is_current(settings: dict) -> bool:
    """Whether the shipped file for ``settings`` exists and matches today's data and training code."""
    model_kwargs = {k: v for k, v in settings.items() if k not in ("seed", "epochs", "lr", "batch_size")}
    model = TinyTransformerClassifier(**model_kwargs)
    return load_shipped_weights(model, load_digits_split(), settings) is not None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report missing or stale files")
    args = parser.parse_args()
    torch.set_num_threads(1)
    stale = [name for name, settings in RECIPES.items() if not is_current(settings)]
    if args.check:
        for name, settings in RECIPES.items():
            state = "stale or missing" if name in stale else "current"
            print(f"{shipped_weights_name(**settings)} ({name}): {state}")
        return 1 if stale else 0
    for name, settings in RECIPES.items():
        model, split, history = pretrain_digits_classifier(**settings, cache=False, progress=False)
        path = save_shipped_weights(model, split, history, **settings)
        print(f"{path.relative_to(WEIGHTS_DIR.parent.parent)} ({name}): train accuracy "
              f"{history.train_accuracy[-1]:.4f}, {history.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
