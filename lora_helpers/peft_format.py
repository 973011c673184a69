"""Hugging Face PEFT's LoRA adapter files, written and read by this package.

``PeftModel.save_pretrained`` writes a directory with two files that matter (and a model card
that does not):

- ``adapter_config.json``: a ``LoraConfig`` as JSON (``peft_type: "LORA"``, ``r``, ``lora_alpha``,
  ``target_modules``, ...). Layers whose rank or alpha differ from ``r`` / ``lora_alpha`` are
  listed in ``rank_pattern`` / ``alpha_pattern``: regular expressions matched against the end of
  the module path, PEFT's rule ``re.match(rf"(.*\\.)?({key})$", path)``, first match wins.
- ``adapter_model.safetensors``: the tensors, keyed ``base_model.model.<module path>.lora_A.weight``
  (shape ``(r, in_features)``) and ``...lora_B.weight`` (shape ``(out_features, r)``), where
  ``<module path>`` is the module's name in the unwrapped model (``model.named_modules()``).
  PEFT's in-memory adapter name (``lora_A.default.weight``) is removed on save. DoRA adds
  ``<module path>.lora_magnitude_vector``, shape ``(out_features,)``.

Field names, defaults and key rules follow PEFT 0.21.2 (``peft/tuners/lora/config.py``,
``peft/utils/save_and_load.py``, ``peft/utils/other.py``). This module imports neither PEFT nor
transformers: only ``json`` and the ``safetensors`` library (the format's own reader and writer).

Besides LoRA's tensors, trained biases (``bias``: ``"lora_only"``/``"all"``) and whole modules
(``modules_to_save``, e.g. a classifier head) are written and read with PEFT's keys, and PiSSA
(``init_lora_weights: "pissa"``), whose SVD is redone on the base model at load time, as PEFT does.

Embedding LoRA (``lora_embedding_A`` ``(r, num_embeddings)``, ``lora_embedding_B``
``(embedding_dim, r)``) and ``Conv1d``/``Conv2d`` LoRA (``lora_A.weight`` ``(r, c_in, *kernel)``,
``lora_B.weight`` ``(c_out, r, 1, ...)``) are written and read in PEFT's layout too.

The code is in ``peft_keys`` (file names, config fields, PEFT's matching rules), ``peft_save``
and ``peft_load``, which reads through two private modules: ``_peft_read`` (the config and the
tensors) and ``_peft_layers`` (per layer type: keys, shapes, refusals, wrapper arguments); this
one re-exports the public names.

Loading is strict: a config field this package does not implement, set to anything but its
"off" value, is refused with a ``ValueError`` that names the field and the value, and so is any
tensor key, module type or shape that does not fit. Nothing is changed in the model until every
check has passed.
"""

from __future__ import annotations

from .peft_keys import CONFIG_NAME, WEIGHTS_NAME
from .peft_load import load_peft_adapter
from .peft_save import save_peft_adapter

__all__ = ["save_peft_adapter", "load_peft_adapter", "CONFIG_NAME", "WEIGHTS_NAME"]
