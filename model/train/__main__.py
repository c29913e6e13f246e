r"""`glmserve train`: tokenizer, pretraining, fine-tuning, and the synthetic-task tools. Flags only.

    glmserve train tokenizer --data corpus.txt --vocab-size 8000 --out runs/tok
    glmserve train pretrain --preset glm-tiny --tokenizer runs/tok --data corpus.txt --out runs/tiny
    glmserve train sft --base default --data chats.jsonl --out runs/sft --lora-rank 16 --lora-alpha 32
    glmserve train sft --base default --data facts.jsonl --out runs/facts --lora-rank 8 --save-adapter-only
    glmserve train sft --base default --data facts.jsonl --out runs/facts --lora-rank 8 --quantization int4
    glmserve train synth --task reverse --out runs/reverse-data
    glmserve train eval --model runs/tiny --data runs/reverse-data/heldout.jsonl

    python -m model.train pretrain ...                              same as `glmserve train pretrain ...`
    glmserve train pretrain --nproc 2 ...                           DDP on this machine (torchrun underneath)
    torchrun --nproc-per-node 8 -m model.train pretrain --fsdp ...  FSDP
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --rdzv-backend c10d \
        --rdzv-endpoint HOST0:29500 -m model.train sft ...          multi-node (run on every node, its rank)
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from model.train.config import (AUTO_BATCH_SIZES, BASE_QUANTIZATIONS, DEFAULT_MIN_STEPS, FULL_SFT_DEFAULTS,
                                LORA_DEFAULTS, MIN_STEPS_PER_EPOCH, PRETRAIN_DEFAULTS, QUANT_GROUP_SIZES,
                                BaseQuantization, LoraConfig, OptimConfig, TrainConfig)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows every flag's default and keeps the docstring's command lines as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.help and "(default:" in action.help:  # a default that depends on the method says so itself
            return action.help
        return super()._get_help_string(action)


def _batch_size(value: str) -> int:
    return 0 if value == "auto" else int(value)


def _add_loop_flags(p: argparse.ArgumentParser, lr: str, max_len: int, min_steps: int = 0,
                    batch_size: str = "8") -> None:
    g = p.add_argument_group("loop")
    g.add_argument("--out", required=True, help="output dir: the exported checkpoint, metrics, checkpoints")
    g.add_argument("--batch-size", type=_batch_size, default=batch_size,
                   help=f"sequences per micro-batch per process; auto (fine-tuning): the largest of {AUTO_BATCH_SIZES} that "
                        f"gives each epoch >= {MIN_STEPS_PER_EPOCH} optimizer steps")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--max-len", type=int, default=max_len, help="tokens per sequence")
    g.add_argument("--epochs", type=float, default=1.0, help="passes over the training data")
    g.add_argument("--max-steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    g.add_argument("--min-steps", type=int, default=min_steps,
                   help="without --max-steps, train at least this many optimizer steps (a small data set runs "
                        "more epochs; 0: off)")
    g.add_argument("--eval-ratio", type=float, default=0.05, help="held-out fraction without --eval-data")
    g.add_argument("--eval-every", type=int, default=0, help="steps between evaluations (0: at the end)")
    g.add_argument("--stop-eval-loss", type=float, default=None,
                   help="stop once an evaluation's loss is at or below this (needs --eval-every)")
    g.add_argument("--save-every", type=int, default=0, help="steps between resumable checkpoints (0: none)")
    g.add_argument("--keep-checkpoints", type=int, default=2, help="resumable checkpoints kept")
    g.add_argument("--log-every", type=int, default=1, help="steps between metrics lines")
    g.add_argument("--seed", type=int, default=0, help="data order and initialization seed")
    g.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    g.add_argument("--bf16", choices=["auto", "on", "off"], default="auto", help="bf16 autocast (auto: on CUDA)")
    g.add_argument("--fsdp", action="store_true", help="shard parameters, grads and optimizer state (FSDP2)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda")
    g.add_argument("--resume", default="auto", help="auto (latest in --out), never, or a checkpoint dir")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    g.add_argument("--nproc", type=int, default=None, help="processes on this machine (runs torchrun)")
    o = p.add_argument_group("optimizer")
    o.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default: {lr})")
    o.add_argument("--weight-decay", type=float, default=None,
                   help="AdamW weight decay (default: 0 with LoRA, 0.1 otherwise)")
    o.add_argument("--warmup-ratio", type=float, default=0.05, help="warmup, as a fraction of the optimizer steps")
    o.add_argument("--warmup-steps", type=int, default=None, help="warmup steps (overrides --warmup-ratio)")
    o.add_argument("--schedule", choices=["linear", "cosine", "constant"], default="cosine",
                   help="decay after warmup")
    o.add_argument("--min-lr-ratio", type=float, default=0.0, help="decay floor, as a fraction of --lr")
    o.add_argument("--max-grad-norm", type=float, default=1.0, help="0 disables clipping")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glmserve train", description=__doc__, formatter_class=_HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _sub = sub.add_parser

    def add_parser(name: str, **kw) -> argparse.ArgumentParser:
        return _sub(name, formatter_class=_HelpFormatter, **kw)

    sub.add_parser = add_parser  # every subcommand's --help shows its defaults too

    t = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer with GLM special tokens")
    t.add_argument("--data", nargs="+", required=True, help="text (blank-line separated) or JSONL {'text'} files")
    t.add_argument("--vocab-size", type=int, default=8000, help="tokens in the vocabulary")
    t.add_argument("--min-frequency", type=int, default=2, help="fewest occurrences of a merge")
    t.add_argument("--out", required=True, help="output dir for the tokenizer files")

    p = sub.add_parser("pretrain", help="train a GLM-architecture model from a preset")
    p.add_argument("--preset", default="glm-tiny", help="a preset of model/config.py PRESETS")
    p.add_argument("--tokenizer", required=True, help="dir written by `glmserve train tokenizer`")
    p.add_argument("--data", nargs="+", required=True, help="text or JSONL {'text'} files")
    p.add_argument("--eval-data", nargs="*", default=[], help="held-out files (default: --eval-ratio of --data); {prompt, completion} JSONL is scored on completions")
    p.add_argument("--model-override", action="append", default=[], metavar="KEY=VALUE",
                   help="change a preset field, e.g. num_hidden_layers=2 (repeatable)")
    _add_loop_flags(p, lr=str(PRETRAIN_DEFAULTS["lr"]), max_len=256)

    s = sub.add_parser("sft", help="fine-tune a checkpoint on chat JSONL (OpenAI or ChatGLM format)")
    s.add_argument("--base", default="default", help="'default', an HF checkpoint dir or a .gguf file")
    s.add_argument("--data", required=True, help="chat JSONL (OpenAI messages or ChatGLM format)")
    s.add_argument("--eval-data", default=None, help="held-out chat JSONL (default: --eval-ratio of --data)")
    s.add_argument("--lora-rank", type=int, default=0, help="0: full fine-tuning")
    s.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA scaling is alpha / rank")
    s.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the adapter's input")
    s.add_argument("--lora-targets", default="qkv_proj,o_proj,gate_up_proj,down_proj", help="projections adapted")
    s.add_argument("--save-adapter-only", action="store_true",
                   help="with --lora-rank: write the adapter alone in PEFT's layout (adapter_config.json + "
                        "adapter_model.safetensors) for `glmserve serve --lora NAME=DIR`, not a merged checkpoint")
    s.add_argument("--quantization", default="none", help=f"{' | '.join(BASE_QUANTIZATIONS)}: hold the frozen "
                   "base in int8 or int4 weights and train LoRA adapters (fp32) over it (QLoRA-style; needs "
                   "--lora-rank; the export is the adapter alone)")
    s.add_argument("--quantization-group-size", type=int, default=32,
                   help=f"int4: inputs per scale, one of {QUANT_GROUP_SIZES}")
    s.add_argument("--skip-bad-lines", action="store_true", help="report bad lines and train on the rest")
    _add_loop_flags(s, lr=f"{LORA_DEFAULTS['lr']} with LoRA, {FULL_SFT_DEFAULTS['lr']} full", max_len=1024,
                    min_steps=DEFAULT_MIN_STEPS, batch_size="auto")

    y = sub.add_parser("synth", help="write a synthetic task (train corpus + held-out items)")
    y.add_argument("--task", choices=["reverse"], default="reverse", help="the synthetic task")
    y.add_argument("--out", required=True, help="output dir for the corpus and held-out items")
    y.add_argument("--num-train", type=int, default=20000, help="training items")
    y.add_argument("--num-eval", type=int, default=200, help="held-out items")
    y.add_argument("--num-validation", type=int, default=0,
                   help="items of validation.jsonl, for --eval-data / --stop-eval-loss during training")
    y.add_argument("--min-len", type=int, default=3, help="shortest string")
    y.add_argument("--max-len", type=int, default=8, help="longest string")
    y.add_argument("--alphabet", default="abcdefghijklmnopqrstuvwxyz", help="letters strings are drawn from")
    y.add_argument("--repeats", action="store_true", help="allow a letter twice in a string")
    y.add_argument("--seed", type=int, default=0, help="random seed")

    e = sub.add_parser("eval", help="exact match of greedy completions on held-out items")
    e.add_argument("--model", required=True, help="checkpoint dir to evaluate")
    e.add_argument("--data", required=True, help='JSONL of {"prompt" or "messages", "completion"}')
    e.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per item")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    e.add_argument("--match", choices=["exact", "contains"], default="exact",
                   help="exact: the output equals the completion; contains: the output includes it")
    e.add_argument("--device", default="cpu", help="cpu or cuda")
    return parser


def _method_defaults(a: argparse.Namespace) -> dict:
    if a.command == "pretrain":
        return PRETRAIN_DEFAULTS
    return LORA_DEFAULTS if a.lora_rank > 0 else FULL_SFT_DEFAULTS


def _train_config(a: argparse.Namespace) -> TrainConfig:
    defaults = _method_defaults(a)
    lr = a.lr if a.lr is not None else defaults["lr"]
    weight_decay = a.weight_decay if a.weight_decay is not None else defaults["weight_decay"]
    optim = OptimConfig(lr=lr, weight_decay=weight_decay, warmup_ratio=a.warmup_ratio, warmup_steps=a.warmup_steps,
                        schedule=a.schedule, min_lr_ratio=a.min_lr_ratio, max_grad_norm=a.max_grad_norm)
    return TrainConfig(out_dir=a.out, batch_size=a.batch_size, grad_accum=a.grad_accum, max_len=a.max_len,
                       epochs=a.epochs, max_steps=a.max_steps, min_steps=a.min_steps, eval_ratio=a.eval_ratio,
                       eval_every=a.eval_every, stop_eval_loss=a.stop_eval_loss,
                       save_every=a.save_every, keep_checkpoints=a.keep_checkpoints, log_every=a.log_every,
                       seed=a.seed, gradient_checkpointing=a.gradient_checkpointing, bf16=a.bf16, fsdp=a.fsdp,
                       device=a.device, resume=a.resume, progress=not a.no_progress, optim=optim)


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--model-override wants KEY=VALUE, got {pair!r}")
        out[key] = json.loads(value)  # numbers and booleans as JSON
    return out


def _relaunch_with_torchrun(argv: list[str], nproc: int) -> int:
    """`--nproc N` without torchrun: start N workers of this same command under torchrun."""
    from torch.distributed.run import main as torchrun_main

    rest, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if not arg.startswith("--nproc="):
            rest.append(arg)
    torchrun_main(["--standalone", f"--nproc-per-node={nproc}", "-m", "model.train", *rest])
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if a.command == "tokenizer":
        from model.train.tokenizer_train import TokenizerTrainConfig, train_tokenizer

        print(train_tokenizer(TokenizerTrainConfig(a.data, a.out, a.vocab_size, a.min_frequency)))
        return 0
    if a.command == "synth":
        from model.train.synthetic import ReverseTaskConfig, make_reverse_task

        files = make_reverse_task(ReverseTaskConfig(a.out, a.num_train, a.num_eval, a.num_validation, a.min_len,
                                                    a.max_len, a.alphabet, not a.repeats, a.seed))
        print("\n".join(p for p in (files.train, files.heldout, files.validation) if p))
        return 0
    if a.command == "eval":
        from model.train.evaluate import exact_match, read_items

        if a.threads:
            import torch

            torch.set_num_threads(a.threads)
        result = exact_match(a.model, read_items(a.data), a.max_new_tokens, a.device, a.match == "contains")
        print(json.dumps({"match": a.match, "accuracy": result.accuracy, "correct": result.correct, "total": result.total,
                          "mistakes": result.examples}, indent=2, ensure_ascii=False))
        return 0
    if a.nproc and a.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return _relaunch_with_torchrun(argv, a.nproc)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger().setLevel(logging.WARNING)  # one rank talks
    if a.command == "pretrain":
        from model.train.pretrain import PretrainConfig, run_pretrain

        if a.batch_size == 0:
            raise SystemExit("--batch-size auto is for fine-tuning; give pretraining a number")

        result = run_pretrain(PretrainConfig(a.preset, a.tokenizer, a.data, _train_config(a), a.eval_data,
                                             _overrides(a.model_override)))
    else:
        from model.train.sft import SFTConfig, run_sft

        try:  # each config checks its own values once; a bad combination is a usage error, not a traceback
            lora = LoraConfig(a.lora_rank, a.lora_alpha, a.lora_dropout, tuple(a.lora_targets.split(",")))
            sft = SFTConfig(a.base, a.data, _train_config(a), a.eval_data, lora, a.skip_bad_lines,
                            a.save_adapter_only, BaseQuantization(a.quantization, a.quantization_group_size))
        except ValueError as e:
            raise SystemExit(f"glmserve train sft: {e}") from None
        result = run_sft(sft)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"out": a.out, "steps": result.steps, "final_eval_loss": result.final_eval_loss,
                          "tokens_per_s": round(result.tokens_per_s, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
