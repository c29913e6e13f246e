"""Greedy generation with a plain CausalLM and exact-match evaluation of a trained checkpoint.

    glmserve train eval --model runs/reverse --data runs/reverse-data/heldout.jsonl

The held-out file has one {"prompt": "...", "completion": "..."} per line (a "messages" list instead
of "prompt" renders through the checkpoint's chat template). A prediction matches when the greedy
continuation, cut at the first stop token and stripped, equals the completion (or, with
contains=True / `--match contains`, includes it). Generation recomputes the whole prefix each token
(no KV cache): an independent reference, not the serving engine.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from model.models.decoder import CausalLM


@torch.no_grad()
def greedy_generate(model: CausalLM, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                    stop_ids: Sequence[int], batch_size: int = 64) -> list[list[int]]:
    """Greedy continuations (stop token excluded). Prompts of equal length run as one batch, so no
    padding or attention mask is needed with the dense causal attention."""
    model.eval()
    device = next(model.parameters()).device
    stops = set(stop_ids)
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_len[len(p)].append(i)
    out: list[list[int]] = [[] for _ in prompts]
    for members in by_len.values():
        for start in range(0, len(members), batch_size):
            rows = members[start: start + batch_size]
            ids = torch.tensor([list(prompts[i]) for i in rows], dtype=torch.long, device=device)  # (B, T)
            finished = [False] * len(rows)
            for _ in range(max_new_tokens):
                next_ids = model.compute_logits(model(ids)[:, -1]).argmax(-1)  # (B,)
                ids = torch.cat([ids, next_ids[:, None]], dim=1)
                for r, tok in enumerate(next_ids.tolist()):
                    if finished[r]:
                        continue
                    if tok in stops:
                        finished[r] = True
                    else:
                        out[rows[r]].append(tok)
                if all(finished):
                    break
    return out


@dataclass
class ExactMatchResult:
    total: int
    correct: int
    examples: list[dict[str, str]]  # the first few mistakes, for reading

    @property
    def accuracy(self) -> float:
        return self.correct / max(1, self.total)


def read_items(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def exact_match(model_dir: str, items: list[dict[str, Any]], max_new_tokens: int = 32,
                device: str = "cpu", contains: bool = False) -> ExactMatchResult:
    from model.chat_template import ChatTemplate
    from model.loader import load_model
    from model.tokenizer import Tokenizer

    loaded = load_model(model_dir, device=device)
    tokenizer = Tokenizer(loaded.path)
    template = ChatTemplate(tokenizer)
    prompts = [template.encode(it["messages"]) if "messages" in it else tokenizer.encode(it["prompt"])
               for it in items]
    outputs = greedy_generate(loaded.model, prompts, max_new_tokens, tokenizer.eos_token_ids)
    correct, mistakes = 0, []
    for item, ids in zip(items, outputs):
        got, want = tokenizer.decode(ids).strip(), item["completion"].strip()
        if (want in got) if contains else (got == want):
            correct += 1
        elif len(mistakes) < 10:
            prompt = item.get("prompt") or item["messages"][-1]["content"]
            mistakes.append({"prompt": prompt, "expected": want, "got": got})
    return ExactMatchResult(len(items), correct, mistakes)
