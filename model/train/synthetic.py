"""Synthetic tasks that show a from-scratch model really learns: string reversal.

    glmserve train synth --task reverse --out runs/reverse-data --num-train 20000 --num-eval 200 --num-validation 200

Writes train.jsonl ({"text": "reverse: a b c = c b a"} per line, a pretraining corpus),
heldout.jsonl ({"prompt": "reverse: a b c =", "completion": "c b a"}) whose strings never occur in
train.jsonl, and with --num-validation a validation.jsonl of the same shape with strings in neither:
what `--eval-data` and `--stop-eval-loss` read during training, so the held-out test stays unseen. Letters are space-separated so that each one is one token whatever BPE merges: the task
is then about attention (copy in mirrored order), not about tokenization accidents. Letters within a
string are distinct by default, so each output letter has exactly one source to attend to.
"""
from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass


@dataclass
class ReverseTaskConfig:
    out_dir: str
    num_train: int = 20000
    num_eval: int = 200
    num_validation: int = 0  # items for the training-time stop condition, apart from the held-out test
    min_len: int = 3
    max_len: int = 8
    alphabet: str = "abcdefghijklmnopqrstuvwxyz"
    distinct: bool = True  # no letter twice in a string, so every output letter has one source
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError("need 1 <= min_len <= max_len")
        if self.distinct and self.max_len > len(set(self.alphabet)):
            raise ValueError("distinct letters need max_len <= the alphabet's size")
        k = len(set(self.alphabet))
        space = sum(math.perm(k, n) if self.distinct else k ** n for n in range(self.min_len, self.max_len + 1))
        if self.num_train + self.num_eval + self.num_validation > space // 2:
            raise ValueError(f"only {space} distinct strings: ask for fewer items or allow longer ones")


def reverse_prompt(letters: str) -> str:
    return f"reverse: {' '.join(letters)} ="


def reverse_answer(letters: str) -> str:
    return " ".join(reversed(letters))


@dataclass
class ReverseTaskFiles:
    train: str
    heldout: str
    validation: str | None  # None without num_validation


def make_reverse_task(cfg: ReverseTaskConfig) -> ReverseTaskFiles:
    """Writes the files; returns their paths."""
    rng = random.Random(cfg.seed)
    seen: set[str] = set()
    items: list[str] = []
    while len(items) < cfg.num_train + cfg.num_eval + cfg.num_validation:
        n = rng.randint(cfg.min_len, cfg.max_len)
        letters = sorted(set(cfg.alphabet))
        s = "".join(rng.sample(letters, n) if cfg.distinct else (rng.choice(letters) for _ in range(n)))
        if s not in seen:  # held-out strings must be new to the model
            seen.add(s)
            items.append(s)
    os.makedirs(cfg.out_dir, exist_ok=True)
    train_path = os.path.join(cfg.out_dir, "train.jsonl")
    eval_path = os.path.join(cfg.out_dir, "heldout.jsonl")
    with open(train_path, "w") as f:
        for s in items[: cfg.num_train]:
            f.write(json.dumps({"text": f"{reverse_prompt(s)} {reverse_answer(s)}"}) + "\n")
    _write_items(eval_path, items[cfg.num_train: cfg.num_train + cfg.num_eval])
    validation_path = None
    if cfg.num_validation:
        validation_path = os.path.join(cfg.out_dir, "validation.jsonl")
        _write_items(validation_path, items[cfg.num_train + cfg.num_eval:])
    return ReverseTaskFiles(train_path, eval_path, validation_path)


def _write_items(path: str, strings: list[str]) -> None:
    with open(path, "w") as f:
        for s in strings:
            f.write(json.dumps({"prompt": reverse_prompt(s), "completion": reverse_answer(s)}) + "\n")
