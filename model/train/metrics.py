"""Training metrics: a JSONL log, a loss-curve PNG and a progress bar (rank 0 only).

    OUT/metrics.jsonl   {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "epoch"} per step,
                        {"step", "eval_loss", "eval_ppl"} per evaluation
    OUT/loss.png        train loss per step and eval loss points

On resume the log is cut back to the checkpoint's step, so the curve continues without duplicates.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

log = logging.getLogger("glmserve.train")


class MetricsLogger:
    def __init__(self, out_dir: str, enabled: bool, total_steps: int, start_step: int, progress: bool) -> None:
        self.enabled = enabled
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.png_path = os.path.join(out_dir, "loss.png")
        self.bar = None
        if not enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        self._truncate_after(start_step)
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", mininterval=0.5,
                            dynamic_ncols=True)

    def _truncate_after(self, step: int) -> None:
        """Keeps the records of steps up to `step` (none when starting at 0): a killed run logged steps
        after its last checkpoint, and those are about to be recomputed."""
        kept = [r for r in read_metrics(self.path) if r["step"] <= step] if step else []
        with open(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.bar is not None and "loss" in record:
            self.bar.update(record["step"] - self.bar.n)
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                 tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
        elif self.bar is not None and "eval_loss" in record:
            self.bar.write(f"step {record['step']}: eval loss {record['eval_loss']:.4f} ppl {record['eval_ppl']:.2f}")

    def records(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def plot(self) -> None:
        if not self.enabled:
            return
        try:
            plot_loss_curve(self.records(), self.png_path)
        except ImportError as e:  # a missing plotting library must never cost the trained model its export
            log.warning("loss curve not drawn (%s); metrics.jsonl has every value", e)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The records of a metrics file; a last line torn by a kill is skipped."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def plot_loss_curve(records: list[dict[str, Any]], png_path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
