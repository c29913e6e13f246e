"""Cost of the simple CPU mixture-of-experts (one gated MLP call per hit expert over the rows routed to it)
against a dense network with the same active parameters: same attention, embeddings and depth, the dense
MLP as wide as the top-k plus shared experts together. Random weights (GLM-4.5 layout, `glm4_moe`), run
through the serving engine (paged KV, continuous batching, oneDNN-packed linears).

    python -m benchmarks.bench_moe                  # 64 experts, top-8 + 1 shared; batch 1 and 16
    python -m benchmarks.bench_moe --experts 128 --batch 1 --batch 32

Prints a markdown table: prefill ms/token, decode ms/token and tok/s per batch size, for each network.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

SHAPE = dict(vocab_size=8192, hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
             head_dim=64, max_position_embeddings=2048, attention_bias=True, partial_rotary_factor=0.5,
             rms_norm_eps=1e-5, pad_token_id=0, eos_token_id=1)


def write_checkpoint(path: str, experts: int, top_k: int, moe_ffn: int, dense: bool) -> None:
    """A glm4_moe checkpoint; `dense` makes every layer a dense MLP of the active experts' total width."""
    from transformers import Glm4MoeConfig, Glm4MoeForCausalLM

    torch.manual_seed(0)
    active_ffn = (top_k + 1) * moe_ffn  # routed top-k + one shared expert
    cfg = Glm4MoeConfig(**SHAPE, intermediate_size=active_ffn, moe_intermediate_size=moe_ffn,
                        n_routed_experts=experts, num_experts_per_tok=top_k, n_shared_experts=1,
                        first_k_dense_replace=SHAPE["num_hidden_layers"] if dense else 0, n_group=1, topk_group=1)
    Glm4MoeForCausalLM(cfg).save_pretrained(path)


def measure(path: str, batches: list[int], prompt_len: int, new_tokens: int) -> dict[str, float]:
    from model import EngineConfig, LLMEngine, SamplingParams

    engine = LLMEngine.from_model(path, EngineConfig(max_num_seqs=max(batches), max_num_batched_tokens=512,
                                                     kv_cache_memory=256 << 20))
    gen = torch.Generator().manual_seed(1)
    prompt = lambda n: torch.randint(2, SHAPE["vocab_size"], (n,), generator=gen).tolist()  # noqa: E731
    engine.generate([prompt(64)], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))  # warm-up
    out: dict[str, float] = {}
    start = time.perf_counter()
    engine.generate([prompt(512)], SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))
    out["prefill_ms_per_token"] = (time.perf_counter() - start) * 1000 / 512
    for b in batches:
        prompts = [prompt(prompt_len) for _ in range(b)]
        params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
        engine.generate(prompts, SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))  # cache-free warm-up
        start = time.perf_counter()
        engine.generate(prompts, params)
        seconds = time.perf_counter() - start
        out[f"decode_tok_s_b{b}"] = b * new_tokens / seconds
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--moe-ffn", type=int, default=256)
    p.add_argument("--batch", type=int, action="append", help="decode batch sizes (default 1 and 16)")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    args = p.parse_args()
    batches = args.batch or [1, 16]
    from model.config import ModelConfig

    rows = []
    for dense in (True, False):
        with tempfile.TemporaryDirectory() as d:
            write_checkpoint(d, args.experts, args.top_k, args.moe_ffn, dense)
            import json

            with open(f"{d}/config.json") as f:
                cfg = ModelConfig.from_hf_dict(json.load(f))
            rows.append((dense, cfg.num_params() / 1e6, cfg.num_params(active=True) / 1e6,
                         measure(d, batches, args.prompt_len, args.new_tokens)))
    print(f"threads={torch.get_num_threads()}, hidden {SHAPE['hidden_size']}, {SHAPE['num_hidden_layers']} layers, "
          f"{args.experts} experts of {args.moe_ffn}, top-{args.top_k} + 1 shared\n")
    head = "| network | params (active) | prefill ms/token | " + " | ".join(
        f"decode tok/s, batch {b}" for b in batches) + " |"
    print(head + "\n|" + "---|" * (3 + len(batches)))
    for dense, total, active, m in rows:
        name = "dense, same active params" if dense else "MoE (per-expert gather)"
        decode = " | ".join(f"{m[f'decode_tok_s_b{b}']:.0f}" for b in batches)
        print(f"| {name} | {total:.1f}M ({active:.1f}M) | {m['prefill_ms_per_token']:.3f} | {decode} |")


if __name__ == "__main__":
    main()
