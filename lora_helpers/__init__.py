"""lora_helpers: small, tested building blocks for learning LoRA (Hu et al. 2021, arXiv 2106.09685).

One concept per module:

- ``layers``: ``LoRALinear``, the LoRA layer, and ``LoRALinearFunction``, its forward and
  hand-written backward pass.
- ``inject``: ``apply_lora`` and friends: put LoRA into a model by name, freeze, merge, unload.
- ``state``: adapter-only checkpoints.
- ``params``: parameter counting, PEFT's ``print_trainable_parameters`` line, the paper's count.
- ``rank``: SVD rank analysis (low-rank approximation, energy/stable/effective rank) and the
  paper's §7 measures (subspace similarity, amplification factor).
- ``plotting``: weight-matrix heatmaps, the LoRA decomposition as a picture, spectra, φ grids,
  accuracy against trainable parameters.
- ``models``: a tiny transformer classifier with separate ``q_proj``/``k_proj``/``v_proj``/``out_proj``.
- ``data``: scikit-learn's bundled handwritten digits as tensors, and domain-shifted tasks.
- ``training``: ``train``/``evaluate``, optimizer-state bytes, the pretrained digits classifier.
"""

from .inject import (
    apply_lora,
    disable_lora,
    lora_layers,
    mark_only_lora_as_trainable,
    merge_and_unload,
    merge_lora,
    unmerge_lora,
)
from .data import TASKS, DigitsSplit, TaskSplit, few_label_split, load_digits_split, make_task
from .layers import LoRALinear, LoRALinearFunction
from .models import MLP, MultiHeadSelfAttention, TinyTransformerClassifier, TransformerBlock
from .params import count_parameters, lora_parameter_count, print_trainable_parameters
from .plotting import (
    plot_accuracy_vs_parameters,
    plot_heatmap,
    plot_lora_decomposition,
    plot_singular_values,
    plot_subspace_similarity,
)
from .rank import (
    amplification_factor,
    effective_rank,
    energy_rank,
    low_rank_approximation,
    projection_norm,
    reconstruction_error,
    singular_values,
    stable_rank,
    subspace_similarity,
    subspace_similarity_grid,
    top_singular_vectors,
)
from .state import checkpoint_bytes, load_lora_state_dict, lora_state_dict
from .training import (
    History,
    LRSweep,
    evaluate,
    optimizer_state_bytes,
    pretrain_digits_classifier,
    sweep_learning_rate,
    train,
)
