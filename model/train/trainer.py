"""The training loop shared by pretraining and SFT.

One optimizer step = grad_accum micro-batches per process, each forward+backward on its own samples
(data.BatchPlan), gradients synchronized on the last one only, then clipping, AdamW, the schedule.
The loss is the mean over every target token of the global batch (all micro-batches of all ranks),
so accumulation, DDP and sequence lengths never change what a step computes.
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from model.models.decoder import CausalLM
from model.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from model.train.config import TrainConfig
from model.train.data import BatchPlan, TokenDataset, eval_batches
from model.train.distributed import DistInfo, all_reduce_sum, gradient_sync, wrap_for_training
from model.train.metrics import MetricsLogger
from model.train.schedule import build_optimizer, build_scheduler, sync_lr

log = logging.getLogger("glmserve.train")


@dataclass
class TrainResult:
    steps: int
    resumed_from: int
    tokens_seen: int  # input tokens of the steps run by this invocation, all ranks together
    train_seconds: float
    tokens_per_s: float
    final_train_loss: float | None
    final_eval_loss: float | None
    final_eval_ppl: float | None


class Trainer:
    def __init__(self, model: CausalLM, train_set: TokenDataset, eval_set: TokenDataset | None,
                 cfg: TrainConfig, info: DistInfo, fingerprint: dict[str, Any]) -> None:
        self.cfg, self.info = cfg, info
        # what must match for a checkpoint to be resumed: the caller's (data, model, task) and the loop's
        self.fingerprint = {**fingerprint, "global_batch": cfg.batch_size * cfg.grad_accum * info.world_size,
                            "max_len": cfg.max_len, "seed": cfg.seed, "optim": asdict(cfg.optim)}
        self.train_set, self.eval_set = train_set, eval_set
        self.model = model.to(info.device)
        self.model.gradient_checkpointing = cfg.gradient_checkpointing
        self.plan = BatchPlan(len(train_set), cfg.batch_size, cfg.grad_accum, info.world_size, cfg.seed)
        self.total_steps = cfg.max_steps or self.plan.steps_for_epochs(cfg.epochs)
        self.wrapped = wrap_for_training(self.model, info, cfg.fsdp)
        self.optimizer = build_optimizer(self.model, cfg.optim)  # after FSDP: it must see the sharded params
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.total_steps)
        self.use_bf16 = cfg.bf16 == "on" or (cfg.bf16 == "auto" and info.device.type == "cuda")
        # per-sample counts, so every rank knows the global batch's totals without communicating
        self._targets = [train_set.num_label_tokens(i) for i in range(len(train_set))]
        self._tokens = [train_set.num_tokens(i) for i in range(len(train_set))]

    def _autocast(self):
        return torch.autocast(self.info.device.type, dtype=torch.bfloat16) if self.use_bf16 else nullcontext()

    def train_step(self, step: int) -> tuple[float, float, int]:
        """One optimizer step; returns (mean loss over the global batch, grad norm, global input tokens)."""
        everyone = self.plan.step_indices(step)
        num_targets = sum(self._targets[i] for mb in everyone for i in mb)
        num_tokens = sum(self._tokens[i] for mb in everyone for i in mb)
        # DDP and FSDP average gradients over ranks; multiplying by world_size turns that into a sum
        scale = self.info.world_size / max(1, num_targets)
        loss_sum = 0.0
        for micro in range(self.cfg.grad_accum):
            batch = self.train_set.batch(self.plan.micro_batch(step, micro, self.info.rank)).to(self.info.device)
            with gradient_sync(self.wrapped, micro == self.cfg.grad_accum - 1):
                with self._autocast():
                    loss = self.wrapped(batch.input_ids, batch.labels)
                (loss * scale).backward()
            loss_sum += loss.item()
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = self.cfg.optim.max_grad_norm or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: DTensor
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        (loss_sum,) = all_reduce_sum([loss_sum], self.info)
        return loss_sum / max(1, num_targets), float(grad_norm), num_tokens

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float] | None:
        """(mean loss, perplexity) over the held-out set, or None without one."""
        if self.eval_set is None:
            return None
        self.wrapped.eval()
        loss_sum, count = 0.0, 0
        for batch in eval_batches(self.eval_set, self.cfg.batch_size, self.info.rank, self.info.world_size):
            batch = batch.to(self.info.device)
            with self._autocast():
                loss_sum += self.wrapped(batch.input_ids, batch.labels).item()
            count += batch.num_label_tokens
        self.wrapped.train()
        loss_sum, count = all_reduce_sum([loss_sum, float(count)], self.info)
        mean = loss_sum / max(1.0, count)
        return mean, math.exp(min(mean, 80.0))

    def _resume(self) -> int:
        if self.cfg.resume == "never":
            return 0
        path = latest_checkpoint(self.cfg.out_dir) if self.cfg.resume == "auto" else self.cfg.resume
        if path is None:
            return 0
        state = load_checkpoint(path, self.model, self.optimizer, self.scheduler, self.info)
        saved = state.get("fingerprint", {})
        if saved != self.fingerprint:
            changed = sorted(k for k in set(saved) | set(self.fingerprint) if saved.get(k) != self.fingerprint.get(k))
            raise ValueError(f"checkpoint {path} belongs to a different run (differs in {changed}); "
                             "use --resume never or another --out")
        sync_lr(self.scheduler)  # --max-steps may have changed the schedule's length since the save
        log.info("resumed from %s at step %d", path, state["step"])
        return int(state["step"])

    def save(self, step: int) -> None:
        save_checkpoint(self.cfg.out_dir, step, self.model, self.optimizer, self.scheduler, self.info,
                        {"fingerprint": self.fingerprint}, self.cfg.keep_checkpoints)

    def train(self) -> TrainResult:
        cfg = self.cfg
        start = self._resume()
        logger = MetricsLogger(cfg.out_dir, self.info.is_main, self.total_steps, start, cfg.progress)
        self.wrapped.train()
        # throughput counts step time only: evaluation, checkpoints and plots are not training
        step_seconds, tokens_seen, last_loss = 0.0, 0, None
        done, stop, evaluated = start, False, None
        try:
            for step in range(start, self.total_steps):
                t0 = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
                last_loss, grad_norm, num_tokens = self.train_step(step)
                dt = time.perf_counter() - t0
                step_seconds += dt
                tokens_seen += num_tokens
                done = step + 1
                if done % cfg.log_every == 0 or done == self.total_steps:
                    logger.log({"step": done, "loss": last_loss, "lr": lr, "grad_norm": grad_norm,
                                "tokens": num_tokens, "tokens_per_s": num_tokens / dt,
                                "epoch": round(self.plan.epoch_at(done), 4)})
                evaluated = None
                if cfg.eval_every and done % cfg.eval_every == 0 and done < self.total_steps:
                    evaluated = self._log_eval(logger, done)
                stop = (evaluated is not None and cfg.stop_eval_loss is not None
                        and evaluated[0] <= cfg.stop_eval_loss)  # every rank sees the same eval loss
                if cfg.save_every and (done % cfg.save_every == 0 or done == self.total_steps or stop):
                    self.save(done)
                    logger.plot()
                if stop:
                    log.info("eval loss %.4f <= --stop-eval-loss %.4f: stopping at step %d", evaluated[0],
                             cfg.stop_eval_loss, done)
                    break
            final = evaluated if stop else self._log_eval(logger, done)
            logger.plot()
        finally:
            logger.close()
        return TrainResult(done, start, tokens_seen, step_seconds, tokens_seen / max(step_seconds, 1e-9),
                           last_loss, final[0] if final else None, final[1] if final else None)

    def _log_eval(self, logger: MetricsLogger, step: int) -> tuple[float, float] | None:
        result = self.evaluate()
        if result is not None:
            logger.log({"step": step, "eval_loss": result[0], "eval_ppl": result[1]})
        return result

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Collective: the unsharded weights on CPU, keyed by our parameter names (empty off rank 0
        under FSDP)."""
        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
