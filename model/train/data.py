"""Training data: corpora into packed sequences, token datasets, and the deterministic batch plan.

Plain-text corpora hold documents separated by blank lines; JSONL corpora hold one {"text": ...}
document per line. Pretraining joins documents with the eos token and cuts the stream into sequences
of exactly max_len tokens (packing), so no compute is spent on padding.

Which samples go into which micro-batch is a pure function of (seed, step): the sample stream is the
concatenation of per-epoch permutations, and optimizer step s consumes the global batch at stream
position s * global_batch. Resuming at step s therefore needs no data-loader state, and rank r of W
with accumulation A sees exactly the samples that micro-batch (m * W + r) of one process with W * A
accumulation would see, which is what makes DDP and accumulation give the same loss curve.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

IGNORE_INDEX = -100


class DataError(ValueError):
    """The data has problems; the message lists each bad line as `file:line: reason`."""

    def __init__(self, path: str, problems: list[tuple[int, str]]) -> None:
        self.path, self.problems = path, problems
        shown = "\n".join(f"  {path}:{line}: {why}" for line, why in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{len(problems)} bad line(s) in {path}:\n{shown}{more}")


def file_sha256(paths: Sequence[str]) -> str:
    """One hash over the bytes of every data file, in order (recorded in training_args.json)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def iter_documents(path: str) -> Iterator[str]:
    """Documents of a corpus file: JSONL lines' "text", or blank-line separated plain text."""
    if path.endswith((".jsonl", ".json")):
        problems: list[tuple[int, str]] = []
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line).get("text")
                except (json.JSONDecodeError, AttributeError) as e:
                    problems.append((line_no, f"not a JSON object ({e.__class__.__name__})"))
                    continue
                if not isinstance(text, str) or not text:
                    problems.append((line_no, 'no non-empty string field "text"'))
                    continue
                yield text
        if problems:
            raise DataError(path, problems)
        return
    with open(path, encoding="utf-8") as f:
        doc: list[str] = []
        for line in f:
            if line.strip():
                doc.append(line)
            elif doc:
                yield "".join(doc).rstrip("\n")
                doc = []
        if doc:
            yield "".join(doc).rstrip("\n")


def pack_documents(paths: Sequence[str], encode, eos_id: int, max_len: int) -> tuple[torch.Tensor, int]:
    """Token stream of all documents, each followed by eos, cut into (N, max_len) sequences.
    Returns the sequences and the number of tail tokens that did not fill a last sequence."""
    stream: list[int] = []
    for path in paths:
        for doc in iter_documents(path):
            stream.extend(encode(doc))
            stream.append(eos_id)
    n = len(stream) // max_len
    if n == 0:
        raise ValueError(f"the corpus has {len(stream)} tokens, fewer than one sequence of max_len={max_len}")
    return torch.tensor(stream[: n * max_len], dtype=torch.long).view(n, max_len), len(stream) - n * max_len


def is_completion_file(path: str) -> bool:
    """A JSONL file whose first item holds "prompt" and "completion" (the held-out task format)."""
    if not path.endswith((".jsonl", ".json")):
        return False
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    item = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(item, dict) and "prompt" in item and "completion" in item
    return False


def completion_dataset(paths: Sequence[str], encode, eos_id: int, max_len: int) -> "TokenDataset":
    """One unpacked row per {"prompt", "completion"} item, `prompt + " " + completion + eos` (the text
    a reversal corpus line holds), with only the completion and eos as targets. Its loss measures the
    task alone: a prompt's random letters put a floor under a packed loss that varies with the data,
    while a learned completion's loss goes to zero whatever the data."""
    rows, labels = [], []
    for path in paths:
        problems: list[tuple[int, str]] = []
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                item = json.loads(line)
                prompt, completion = item.get("prompt"), item.get("completion")
                if not isinstance(prompt, str) or not isinstance(completion, str) or not completion:
                    problems.append((line_no, 'needs string fields "prompt" and a non-empty "completion"'))
                    continue
                head = encode(prompt)
                ids = encode(f"{prompt} {completion}") + [eos_id]
                if ids[: len(head)] != head or len(ids) > max_len:
                    problems.append((line_no, "the prompt's tokens are not a prefix of the item's" if
                                     ids[: len(head)] != head else f"longer than max_len={max_len} tokens"))
                    continue
                rows.append(ids)
                labels.append([IGNORE_INDEX] * len(head) + ids[len(head):])
        if problems:
            raise DataError(path, problems)
    if not rows:
        raise ValueError(f"no prompt/completion items in {list(paths)}")
    return TokenDataset(rows, labels, pad_id=eos_id)


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T), IGNORE_INDEX where no loss
    num_tokens: int  # real (non-pad) input tokens, for throughput
    num_label_tokens: int  # predicted tokens (labels[:, 1:] that count)

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.input_ids.to(device), self.labels.to(device), self.num_tokens, self.num_label_tokens)


class TokenDataset:
    """Sequences of token ids with per-token labels (None: every token is a target)."""

    def __init__(self, input_ids: Sequence[Sequence[int]] | torch.Tensor,
                 labels: Sequence[Sequence[int]] | None = None, pad_id: int = 0) -> None:
        self.input_ids = [torch.as_tensor(x, dtype=torch.long) for x in input_ids]
        self.labels = None if labels is None else [torch.as_tensor(y, dtype=torch.long) for y in labels]
        self.pad_id = pad_id
        if self.labels is not None and any(a.shape != b.shape for a, b in zip(self.input_ids, self.labels)):
            raise ValueError("input_ids and labels differ in length")

    def __len__(self) -> int:
        return len(self.input_ids)

    def num_label_tokens(self, i: int) -> int:
        if self.labels is None:
            return len(self.input_ids[i]) - 1
        return int((self.labels[i][1:] != IGNORE_INDEX).sum())

    def num_tokens(self, i: int) -> int:
        return len(self.input_ids[i])

    def batch(self, indices: Sequence[int], num_filler: int = 0) -> Batch:
        """Right-padded to the longest member; padding is never a target. The last `num_filler` rows
        only keep call counts equal across ranks: they are neither targets nor counted tokens."""
        width = max(len(self.input_ids[i]) for i in indices)
        ids = torch.full((len(indices), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(indices), width), IGNORE_INDEX, dtype=torch.long)
        num_tokens = 0
        for row, i in enumerate(indices):
            x = self.input_ids[i]
            ids[row, : len(x)] = x
            if row >= len(indices) - num_filler:
                continue
            labels[row, : len(x)] = x if self.labels is None else self.labels[i]
            num_tokens += len(x)
        return Batch(ids, labels, num_tokens, int((labels[:, 1:] != IGNORE_INDEX).sum()))

    def split(self, eval_ratio: float, seed: int) -> tuple["TokenDataset", "TokenDataset | None"]:
        """A seeded random held-out split (at least one example when eval_ratio > 0)."""
        if eval_ratio <= 0 or len(self) < 2:
            return self, None
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed + 7919)).tolist()
        n_eval = max(1, int(round(len(self) * eval_ratio)))
        return self.subset(order[n_eval:]), self.subset(order[:n_eval])

    def subset(self, indices: Sequence[int]) -> "TokenDataset":
        labels = None if self.labels is None else [self.labels[i] for i in indices]
        return TokenDataset([self.input_ids[i] for i in indices], labels, self.pad_id)


class BatchPlan:
    """Which dataset indices each (step, micro-batch, rank) trains on; see the module docstring."""

    def __init__(self, num_samples: int, batch_size: int, grad_accum: int, world_size: int, seed: int) -> None:
        if num_samples < 1:
            raise ValueError("the training set is empty")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.grad_accum, self.world_size, self.seed = grad_accum, world_size, seed
        self._perms: dict[int, list[int]] = {}

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    def steps_for_epochs(self, epochs: float) -> int:
        return max(1, int(-(-epochs * self.num_samples // self.global_batch)))  # ceil

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            if len(self._perms) >= 2:  # a step spans at most two epochs: keep only those
                self._perms.pop(min(self._perms))
            self._perms[epoch] = torch.randperm(self.num_samples, generator=g).tolist()
        return self._perms[epoch]

    def _stream(self, start: int, count: int) -> list[int]:
        out = []
        for pos in range(start, start + count):
            epoch, i = divmod(pos, self.num_samples)
            out.append(self._perm(epoch)[i])
        return out

    def micro_batch(self, step: int, micro: int, rank: int) -> list[int]:
        start = step * self.global_batch + (micro * self.world_size + rank) * self.batch_size
        return self._stream(start, self.batch_size)

    def step_indices(self, step: int) -> list[list[int]]:
        """All micro-batches of a step, every rank's, in (micro, rank) order."""
        return [self.micro_batch(step, m, r) for m in range(self.grad_accum) for r in range(self.world_size)]

    def epoch_at(self, step: int) -> float:
        return step * self.global_batch / self.num_samples


def eval_batches(dataset: TokenDataset, batch_size: int, rank: int, world_size: int) -> Iterator[Batch]:
    """This rank's share of the held-out set, in order; every example is seen by exactly one rank, and
    every rank makes the same number of forward calls (FSDP's collectives need that)."""
    per_rank = -(-len(dataset) // world_size)
    mine = list(range(rank, len(dataset), world_size))
    for i in range(0, per_rank, batch_size):
        chunk = mine[i: i + batch_size]
        num_filler = min(batch_size, per_rank - i) - len(chunk)
        yield dataset.batch(chunk + [0] * num_filler, num_filler)


def data_files_exist(paths: Sequence[str]) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"data file(s) not found: {missing}")
