"""lora_helpers: small, tested building blocks for learning LoRA (Hu et al. 2021, arXiv 2106.09685)."""
