"""lora_helpers: small, tested building blocks for learning LoRA (Hu et al. 2021, arXiv 2106.09685).

One concept per module:

- ``lora_layer``: ``LoRALayer``, the protocol every LoRA wrapper follows (what the core uses
  instead of a list of types) and what they share: ``weight``/``bias``, ``merge``/``unmerge``.
- ``layers``: ``LoRALinear``, the LoRA layer (rsLoRA as an option); ``lora_function``:
  ``LoRALinearFunction``, its forward and hand-written backward pass.
- ``dora``: ``DoRALinear`` (``LoRALinear(..., use_dora=True)``, through ``LoRALinear.variants``),
  DoRA's row norms without the ``(out, in)`` matrix, and its forward/backward pass. ``pissa``:
  PiSSA's SVD initialisation.
- ``embedding``, ``conv``, ``attention``: LoRA beyond ``nn.Linear`` (``LoRAEmbedding``,
  ``LoRAConv1d``/``LoRAConv2d``, ``LoRAFusedLinear``, ``LoRAMultiheadAttention``), in PEFT's
  layouts; each registers its builder in ``inject.LORA_WRAPPERS``.
- ``optimizers``: ``create_loraplus_optimizer`` (LoRA+: a larger learning rate for B).
- ``inject``: ``apply_lora`` and friends: put LoRA into a model by name, freeze, merge, unload;
  ``LORA_WRAPPERS``, the layer type → wrapper table where new layer types plug in.
- ``_modules`` (private): PEFT's module-name matching, module replacement with rollback, shared
  by ``inject`` and ``quantization``. ``_checks`` (private): argument checks.
- ``state``: adapter-only checkpoints.
- ``peft_format``: Hugging Face PEFT's adapter files (``adapter_config.json`` +
  ``adapter_model.safetensors``), written and read.
- ``params``: parameter counting, PEFT's ``print_trainable_parameters`` line, the paper's count.
- ``rank``: SVD rank analysis (low-rank approximation, energy/stable/effective rank) and the
  paper's §7 measures (subspace similarity, amplification factor).
- ``plotting``: pictures of matrices: weight heatmaps, the LoRA decomposition, φ grids.
  ``charts``: singular-value spectra with their energy, accuracy against trainable parameters.
- ``models``: a tiny transformer classifier and its blocks, with separate
  ``q_proj``/``k_proj``/``v_proj``/``out_proj``. ``language_model``: a small character GPT
  (``CharGPT``, causal attention) and ``generate``/``generate_text``.
- ``data``: scikit-learn's bundled handwritten digits as tensors, and domain-shifted tasks.
- ``quantization``: QLoRA's 4-bit NormalFloat (NF4): ``quantize_nf4``, ``NF4Linear``,
  ``quantize_model``.
- ``text``: two pinned text corpora (Python's docs and standard-library source), a character
  tokenizer, a seeded split into contiguous blocks, random training windows.
- ``training``: ``train``/``evaluate``, ``train_language_model``/``bits_per_character``,
  optimizer-state bytes.
- ``pretrained``: the pretrained digits classifier (kept on disk after its first training).
- ``sweep``: the fair learning-rate sweep (one grid, several seeds, validation data, a tie rule),
  and ``tune_learning_rate``, the same on a window of rates that widens until the pick is inside.
"""

from .inject import (
    LORA_WRAPPERS,
    apply_lora,
    disable_lora,
    lora_layers,
    mark_only_lora_as_trainable,
    merge_and_unload,
    merge_lora,
    unmerge_lora,
)
from .attention import LoRAFusedLinear, LoRAMultiheadAttention
from .conv import LoRAConv1d, LoRAConv2d
from .embedding import LoRAEmbedding
from .data import TASKS, DigitsSplit, TaskSplit, few_label_split, load_digits_split, make_task
from .dora import DoRALinear, DoRALinearFunction
from .layers import LoRALinear, LoRALinearFunction
from .lora_layer import LoRALayer
from .models import MLP, MultiHeadSelfAttention, TinyTransformerClassifier, TransformerBlock
from .language_model import CharGPT, generate, generate_text
from .optimizers import create_loraplus_optimizer
from .peft_format import load_peft_adapter, save_peft_adapter
from .params import count_parameters, lora_parameter_count, print_trainable_parameters
from .plotting import plot_heatmap, plot_lora_decomposition, plot_subspace_similarity
from .charts import plot_accuracy_vs_parameters, plot_singular_values
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
from .quantization import (
    NF4_LEVELS,
    NF4Linear,
    NF4Tensor,
    dequantize_model,
    nf4_levels,
    quantize_model,
    quantize_nf4,
)
from .state import checkpoint_bytes, load_lora_state_dict, lora_state_dict
from .text import CORPORA, CharTokenizer, TextSplit, load_corpus, sample_batch, split_text
from .sweep import LRSweep, sweep_learning_rate, tune_learning_rate
from .pretrained import pretrain_digits_classifier
from .training import (
    History,
    bits_per_character,
    evaluate,
    optimizer_state_bytes,
    progress_bar,
    train,
    train_language_model,
)
