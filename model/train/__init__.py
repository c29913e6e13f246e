"""Training: tokenizer, pretraining from presets, SFT and LoRA, DDP/FSDP, HF-format export.

Entry point: `glmserve train tokenizer|pretrain|sft|synth|eval ...` (see __main__.py)."""
