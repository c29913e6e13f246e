"""Faithful tiny replicas of the GLM checkpoints people download, written at test time.

    from tests.helpers.glm_replicas import build_chatglm3_replica
    path = build_chatglm3_replica(tmp_dir)        # reused when `tmp_dir/complete` exists

Each replica has every file its hub repository has (the remote-code .py files as inert text that raises
if anything ever imports it), every config.json key with the sizes scaled down, a tokenizer file of the
same type (SentencePiece for ChatGLM3, tiktoken ranks for GLM-4, tokenizer.json for the -hf and 0414
repos), the repository's chat template and control tokens at the same positions relative to the
vocabulary. Weights are random: written by transformers (`glm`, `glm4`), or for `model_type: chatglm`
an HF `glm` model's tensors renamed into ChatGLM's layout (the same network), so transformers' Glm on
`reference_hf_dir(path)` is the reference for greedy output.

    build_chatglm3_replica    THUDM/chatglm3-6b          chatglm, SentencePiece tokenizer.model
    build_glm4_chat_replica   THUDM/glm-4-9b-chat        chatglm, tiktoken tokenizer.model
    build_glm4_chat_hf_replica THUDM/glm-4-9b-chat-hf    glm, tokenizer.json
    build_glm4_0414_replica   THUDM/GLM-4-9B-0414        glm4, tokenizer.json, its own tool template
    build_glm_z1_replica      THUDM/GLM-Z1-9B-0414       glm4, tokenizer.json, <think> generation prompt
    build_glm4_moe_replica    zai-org/GLM-4.5-Air        glm4_moe (the architecture work's, at the end)
"""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Callable

from tests.helpers import glm_templates

# the tiny network every replica shares (scaled from hidden 4096, 32 heads, 2 KV groups, 40 layers)
HIDDEN, HEADS, KV_GROUPS, HEAD_DIM, FFN, LAYERS = 64, 4, 2, 16, 128, 2

CORPUS = ("GLM models call tools and answer in Chinese and English. 你好，北京今天天气很好，适合出去走走。\n"
          "def tool_call(**kwargs):\n    return kwargs  # Python code, indented\n\n"
          '{"city": "北京", "unit": "celsius", "temperature": 22}\n'
          "The quick brown fox jumps over the lazy dog 1234567890 times! 😀🎉\n"
          "人工智能助手可以回答问题、写代码和翻译文本。上海、深圳和杭州都是大城市。\n"
          "Un café crème, s'il vous plaît: naïve façade, Ärger über Öl.\n") * 30

GLM4_SPECIALS = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
                 "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>",
                 "<|begin_of_video|>", "<|end_of_video|>"]

INERT_PY = ('"""Replica of the hub repository\'s {name}: text only. glmserve must never run it."""\n'
            'raise RuntimeError("{name} of a glmserve test replica was executed")\n')


def _round_up(n: int, multiple: int = 64) -> int:
    return (n + multiple - 1) // multiple * multiple


def _cached(dest: str | Path, build: Callable[[Path], None]) -> str:
    dest = Path(dest)
    if (dest / "complete").exists():
        return str(dest)
    dest.mkdir(parents=True, exist_ok=True)
    build(dest)
    (dest / "complete").write_text("ok\n")
    return str(dest)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_repo_text(dest: Path, names: list[str], py_files: list[str]) -> None:
    for name in names:
        (dest / name).write_text(f"{name} of a glmserve test replica\n", encoding="utf-8")
    for name in py_files:
        (dest / name).write_text(INERT_PY.format(name=name), encoding="utf-8")


# ---- tokenizers ----------------------------------------------------------------------------------------
def train_sentencepiece(model_prefix: Path, vocab_size: int = 600) -> Path:
    """A ChatGLM3-style SentencePiece BPE model (byte fallback, dummy prefix, whitespace kept)."""
    import sentencepiece as spm

    corpus = model_prefix.with_suffix(".corpus.txt")
    corpus.write_text(CORPUS, encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(model_prefix), vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True, hard_vocab_limit=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, num_threads=1)
    corpus.unlink()
    model_prefix.with_suffix(".vocab").unlink()  # the trainer's listing; not a file of the hub repository
    return model_prefix.with_suffix(".model")


def train_glm4_bpe(vocab_size: int = 900):
    """A byte-level BPE with GLM-4's pre-tokenizer regex, its 14 control tokens after the ranks and the
    `[gMASK]<sop>` post-processor: the tokenizer.json of the -hf / 0414 repos, scaled down."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from model.glm_tokenizers.tiktoken_file import GLM4_PAT_STR

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(GLM4_PAT_STR), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([CORPUS], trainer)
    tok.add_special_tokens(GLM4_SPECIALS)
    tok.post_processor = processors.TemplateProcessing(
        single="[gMASK] <sop> $A", pair="[gMASK] <sop> $A $B",
        special_tokens=[(t, tok.token_to_id(t)) for t in ("[gMASK]", "<sop>")])
    return tok


def tiktoken_ranks(tok) -> list[tuple[bytes, int]]:
    """The byte-level BPE's tokens as tiktoken ranks (token id order = merge order)."""
    from tokenizers import pre_tokenizers

    alphabet = {ch: b for b, ch in enumerate(_gpt2_chars())}
    assert set(pre_tokenizers.ByteLevel.alphabet()) == set(alphabet)
    vocab = tok.get_vocab(with_added_tokens=False)
    return sorted(((bytes(alphabet[c] for c in piece), i) for piece, i in vocab.items()), key=lambda t: t[1])


def _gpt2_chars() -> list[str]:
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    out, extra = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def _glm4_added_tokens(base: int) -> dict[str, Any]:
    return {str(base + i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                            "single_word": False, "special": True} for i, t in enumerate(GLM4_SPECIALS)}


def _glm4_tokenizer_config(base: int, template: str, **extra: Any) -> dict[str, Any]:
    return {"added_tokens_decoder": _glm4_added_tokens(base), "additional_special_tokens": GLM4_SPECIALS[1:],
            "chat_template": template, "clean_up_tokenization_spaces": False, "do_lower_case": False,
            "eos_token": "<|endoftext|>", "model_input_names": ["input_ids", "attention_mask"],
            "model_max_length": 128000, "pad_token": "<|endoftext|>", "padding_side": "left",
            "remove_space": False, **extra}


# ---- weights -------------------------------------------------------------------------------------------
def _hf_glm(vocab_size: int, theta: float, eps: float, seed: int, pad: int, eos: int | list[int]):
    import torch
    from transformers import GlmConfig, GlmForCausalLM

    torch.manual_seed(seed)
    cfg = GlmConfig(vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                    num_attention_heads=HEADS, num_key_value_heads=KV_GROUPS, head_dim=HEAD_DIM,
                    attention_bias=True, rms_norm_eps=eps, rope_theta=theta, partial_rotary_factor=0.5,
                    max_position_embeddings=2048, tie_word_embeddings=False, pad_token_id=pad,
                    eos_token_id=eos)
    model = GlmForCausalLM(cfg).eval()
    with torch.no_grad():  # HF starts norms at 1 and biases at 0, which would hide a misplaced tensor
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def chatglm_state_dict(hf_glm) -> dict[str, Any]:
    """An HF `glm` model's tensors under ChatGLM's remote-code names (fused query_key_value)."""
    import torch

    sd = hf_glm.state_dict()
    out = {"transformer.embedding.word_embeddings.weight": sd["model.embed_tokens.weight"],
           "transformer.encoder.final_layernorm.weight": sd["model.norm.weight"],
           "transformer.output_layer.weight": sd["lm_head.weight"]}
    for i in range(hf_glm.config.num_hidden_layers):
        src, dst = f"model.layers.{i}.", f"transformer.encoder.layers.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}self_attention.query_key_value.{kind}"] = torch.cat(
                [sd[f"{src}self_attn.{p}_proj.{kind}"] for p in "qkv"])
        out[f"{dst}self_attention.dense.weight"] = sd[f"{src}self_attn.o_proj.weight"]
        out[f"{dst}mlp.dense_h_to_4h.weight"] = sd[f"{src}mlp.gate_up_proj.weight"]
        out[f"{dst}mlp.dense_4h_to_h.weight"] = sd[f"{src}mlp.down_proj.weight"]
        out[f"{dst}input_layernorm.weight"] = sd[f"{src}input_layernorm.weight"]
        out[f"{dst}post_attention_layernorm.weight"] = sd[f"{src}post_attention_layernorm.weight"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def _write_shards(dest: Path, tensors: dict[str, Any], num_shards: int, bin_too: bool = False) -> None:
    """model-0000i-of-0000n.safetensors + model.safetensors.index.json (and the .bin twins when asked)."""
    import torch
    from safetensors.torch import save_file

    names = sorted(tensors)
    groups = [names[i::num_shards] for i in range(num_shards)]
    for suffix, save in ((".safetensors", lambda d, p: save_file(d, str(p), metadata={"format": "pt"})),
                         (".bin", lambda d, p: torch.save(d, p))):
        if suffix == ".bin" and not bin_too:
            continue
        stem = "model" if suffix == ".safetensors" else "pytorch_model"
        weight_map = {}
        for k, group in enumerate(groups, 1):
            shard = f"{stem}-{k:05d}-of-{num_shards:05d}{suffix}"
            save({n: tensors[n] for n in group}, dest / shard)
            weight_map.update({n: shard for n in group})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = "model.safetensors.index.json" if suffix == ".safetensors" else "pytorch_model.bin.index.json"
        _write_json(dest / index, {"metadata": {"total_size": total}, "weight_map": weight_map})


def reference_hf_dir(replica: str | Path) -> str:
    """For a model_type chatglm replica: the HF `glm` checkpoint it was made from (transformers loads it),
    kept next to the replica so the replica holds only its repository's files."""
    return str(Path(replica)) + ".hf-reference"


# ---- the replicas --------------------------------------------------------------------------------------
def _chatglm_config(vocab: int, **keys: Any) -> dict[str, Any]:
    """config.json of the remote-code ChatGLM2/3 / GLM-4-9b-chat layout, sizes scaled down."""
    return {
        "_name_or_path": keys.pop("_name_or_path"), "model_type": "chatglm", "architectures": ["ChatGLMModel"],
        "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                     "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
                     "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
                     "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
                     "AutoModelForSequenceClassification": "modeling_chatglm.ChatGLMForSequenceClassification"},
        "add_bias_linear": False, "add_qkv_bias": True, "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False, "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True, "bias_dropout_fusion": True, "ffn_hidden_size": FFN,
        "fp32_residual_connection": False, "hidden_dropout": 0.0, "hidden_size": HIDDEN, "kv_channels": HEAD_DIM,
        "multi_query_attention": True, "multi_query_group_num": KV_GROUPS, "num_attention_heads": HEADS,
        "num_layers": LAYERS, "original_rope": True, "padded_vocab_size": vocab, "post_layer_norm": True,
        "rmsnorm": True, "use_cache": True, "tie_word_embeddings": False, **keys}


def _build_chatglm3(dest: Path) -> None:
    import sentencepiece as spm

    model_file = train_sentencepiece(dest / "tokenizer")
    n = spm.SentencePieceProcessor(model_file=str(model_file)).vocab_size()
    vocab = _round_up(n + 9)
    hf = _hf_glm(vocab, theta=10000.0, eps=1e-5, seed=3, pad=0, eos=2)
    hf.save_pretrained(reference_hf_dir(dest))
    _write_shards(dest, chatglm_state_dict(hf), num_shards=2, bin_too=True)
    _write_json(dest / "config.json", _chatglm_config(
        vocab, _name_or_path="THUDM/chatglm3-6b", layernorm_epsilon=1e-5, seq_length=2048, torch_dtype="float32",
        transformers_version="4.30.2", eos_token_id=2, pad_token_id=0))
    # only <|user|> and <|observation|> are listed as added tokens, as in the hub repository
    user, observation = n + 6, n + 8
    _write_json(dest / "tokenizer_config.json", {
        "added_tokens_decoder": {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True}
                                 for i, t in ((user, "<|user|>"), (observation, "<|observation|>"))},
        "additional_special_tokens": ["<|user|>", "<|observation|>"],
        "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]},
        "chat_template": glm_templates.CHATGLM3, "clean_up_tokenization_spaces": False, "do_lower_case": False,
        "eos_token": "</s>", "model_max_length": 1000000000000000019884624838656, "pad_token": "<unk>",
        "padding_side": "left", "remove_space": False, "tokenizer_class": "ChatGLMTokenizer", "unk_token": "<unk>"})
    _write_repo_text(dest, [".gitattributes", "MODEL_LICENSE", "README.md"],
                     ["configuration_chatglm.py", "modeling_chatglm.py", "quantization.py", "tokenization_chatglm.py"])


def _build_glm4_chat(dest: Path) -> None:
    tok = train_glm4_bpe()
    ranks = tiktoken_ranks(tok)
    with open(dest / "tokenizer.model", "wb") as f:
        for token, rank in ranks:
            f.write(base64.b64encode(token) + b" " + str(rank).encode() + b"\n")
    base = len(ranks)
    vocab = _round_up(base + len(GLM4_SPECIALS))
    eos = [base, base + 7, base + 9]  # <|endoftext|>, <|user|>, <|observation|>
    hf = _hf_glm(vocab, theta=10000.0 * 500, eps=1.5625e-07, seed=4, pad=base, eos=eos)
    hf.save_pretrained(reference_hf_dir(dest))
    _write_shards(dest, chatglm_state_dict(hf), num_shards=2)
    _write_json(dest / "config.json", _chatglm_config(
        vocab, _name_or_path="THUDM/glm-4-9b-chat", attn_implementation="sdpa", layernorm_epsilon=1.5625e-07,
        num_hidden_layers=LAYERS, rope_ratio=500, seq_length=2048, torch_dtype="float32",
        transformers_version="4.42.4", eos_token_id=eos, pad_token_id=base))
    _write_json(dest / "generation_config.json", {"eos_token_id": eos, "pad_token_id": base, "do_sample": True,
                                                   "temperature": 0.8, "max_length": 2048, "top_p": 0.8,
                                                   "transformers_version": "4.44.0"})
    _write_json(dest / "tokenizer_config.json", _glm4_tokenizer_config(
        base, glm_templates.GLM4_CHAT, auto_map={"AutoTokenizer": ["tokenization_chatglm.ChatGLM4Tokenizer", None]},
        tokenizer_class="ChatGLM4Tokenizer"))
    _write_repo_text(dest, [".gitattributes", "LICENSE", "README.md", "README_en.md"],
                     ["configuration_chatglm.py", "modeling_chatglm.py", "tokenization_chatglm.py"])


def _build_hf_glm4_family(dest: Path, model_type: str, template: str, name: str, seed: int) -> None:
    """glm-4-9b-chat-hf (`glm`) and the 0414 repos (`glm4`): transformers writes config and weights."""
    import torch
    import transformers as tf

    tok = train_glm4_bpe()
    tok.save(str(dest / "tokenizer.json"))
    base = tok.get_vocab_size(with_added_tokens=False)
    vocab = _round_up(base + len(GLM4_SPECIALS))
    eos = [base, base + 7, base + 9]
    cls_cfg, cls_model = ((tf.GlmConfig, tf.GlmForCausalLM) if model_type == "glm"
                          else (tf.Glm4Config, tf.Glm4ForCausalLM))
    torch.manual_seed(seed)
    config = cls_cfg(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                     num_attention_heads=HEADS, num_key_value_heads=KV_GROUPS, head_dim=HEAD_DIM,
                     attention_bias=True, rms_norm_eps=1e-5 if model_type == "glm4" else 1.5625e-07,
                     max_position_embeddings=2048, partial_rotary_factor=0.5, pad_token_id=base, eos_token_id=eos,
                     rope_theta=10000.0 if model_type == "glm4" else 10000.0 * 500, tie_word_embeddings=False)
    config._name_or_path = name
    model = cls_model(config).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname or pname.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(dest, max_shard_size="250KB")
    # the hub's config.json as transformers 4.4x wrote it (top-level rope_theta / partial_rotary_factor),
    # not transformers 5's spelling: what users actually download
    _write_json(dest / "config.json", {
        "architectures": [cls_model.__name__], "attention_bias": True, "attention_dropout": 0.0,
        "eos_token_id": eos, "head_dim": HEAD_DIM, "hidden_act": "silu", "hidden_size": HIDDEN,
        "initializer_range": 0.02, "intermediate_size": FFN, "max_position_embeddings": 2048,
        "model_type": model_type, "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
        "num_key_value_heads": KV_GROUPS, "pad_token_id": base, "partial_rotary_factor": 0.5,
        "rms_norm_eps": config.rms_norm_eps, "rope_theta": 10000.0 if model_type == "glm4" else 10000.0 * 500,
        "tie_word_embeddings": False, "torch_dtype": "float32",
        "transformers_version": "4.51.3" if model_type == "glm4" else "4.46.0", "use_cache": True,
        "vocab_size": vocab})
    _write_json(dest / "generation_config.json", {"_from_model_config": True, "do_sample": True, "eos_token_id": eos,
                                                   "pad_token_id": base, "temperature": 0.6, "top_p": 0.8,
                                                   "max_length": 2048, "transformers_version": "4.51.3"})
    _write_json(dest / "tokenizer_config.json", _glm4_tokenizer_config(
        base, template, tokenizer_class="PreTrainedTokenizerFast"))
    _write_repo_text(dest, [".gitattributes", "LICENSE", "README.md"] + (["README_en.md"] if model_type == "glm" else []),
                     [])


def build_chatglm3_replica(dest: str | Path) -> str:
    """THUDM/chatglm3-6b: model_type chatglm, SentencePiece tokenizer.model, remote-code tokenizer."""
    return _cached(dest, _build_chatglm3)


def build_glm4_chat_replica(dest: str | Path) -> str:
    """THUDM/glm-4-9b-chat: model_type chatglm, tiktoken tokenizer.model, remote-code tokenizer."""
    return _cached(dest, _build_glm4_chat)


def build_glm4_chat_hf_replica(dest: str | Path) -> str:
    """THUDM/glm-4-9b-chat-hf: model_type glm, tokenizer.json, glm-4-9b-chat's template."""
    return _cached(dest, lambda d: _build_hf_glm4_family(d, "glm", glm_templates.GLM4_CHAT,
                                                         "THUDM/glm-4-9b-chat-hf", seed=5))


def build_glm4_0414_replica(dest: str | Path) -> str:
    """THUDM/GLM-4-9B-0414: model_type glm4, tokenizer.json, a template that reads `tools` itself."""
    return _cached(dest, lambda d: _build_hf_glm4_family(d, "glm4", glm_templates.GLM4_0414,
                                                         "THUDM/GLM-4-9B-0414", seed=6))


def build_glm_z1_replica(dest: str | Path) -> str:
    """THUDM/GLM-Z1-9B-0414: model_type glm4, tokenizer.json, `<think>` opened by the generation prompt."""
    return _cached(dest, lambda d: _build_hf_glm4_family(d, "glm4", glm_templates.GLM_Z1_0414,
                                                         "THUDM/GLM-Z1-9B-0414", seed=7))


# ---- GLM-4.5 (glm4_moe) ---------------------------------------------------------------------------------
# zai-org/GLM-4.5 / GLM-4.5-Air: GLM-4's 14 control tokens followed by these, contiguous after the BPE
# ranks (151329...151364 in the hub vocabulary). The thinking and tool-call markers are added tokens but
# not special, so decoding with skip_special_tokens keeps them for the reasoning and tool parsers.
GLM45_SPECIALS = GLM4_SPECIALS + [
    "<|begin_of_audio|>", "<|end_of_audio|>", "<|begin_of_transcription|>", "<|end_of_transcription|>",
    "<|code_prefix|>", "<|code_middle|>", "<|code_suffix|>", "<think>", "</think>", "<tool_call>", "</tool_call>",
    "<tool_response>", "</tool_response>", "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>", "/nothink",
    "<|begin_of_box|>", "<|end_of_box|>", "<|image|>", "<|video|>"]
GLM45_NOT_SPECIAL = {"<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
                     "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>", "/nothink"}

# GLM-4.5's chat format (chat_template.jinja of the hub repository), written from its published layout:
# `[gMASK]<sop>`, an optional tools system turn, `<|role|>\n` turns, assistant turns as
# `\n<think>REASONING</think>\nCONTENT` (reasoning kept only after the last user turn), calls as
# `\n<tool_call>NAME\n<arg_key>K</arg_key>\n<arg_value>V</arg_value></tool_call>` (strings raw, the rest
# JSON), consecutive tool results in one `<|observation|>` turn, `/nothink` and an empty think block
# when enable_thinking is false.
GLM45_CHAT = """[gMASK]<sop>
{%- if tools -%}
<|system|>
# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{% for tool in tools %}
{{ tool | tojson(ensure_ascii=False) }}
{% endfor %}
</tools>

For each function call, output the function name and arguments within the following XML format:
<tool_call>{function-name}
<arg_key>{arg-key-1}</arg_key>
<arg_value>{arg-value-1}</arg_value>
<arg_key>{arg-key-2}</arg_key>
<arg_value>{arg-value-2}</arg_value>
...
</tool_call>
{%- endif -%}
{%- macro text_of(content) -%}
{%- if content is string -%}{{ content }}
{%- elif content is iterable and content is not mapping -%}
{%- for part in content -%}
{%- if part is mapping and part.type == 'text' -%}{{ part.text }}{%- elif part is string -%}{{ part }}{%- endif -%}
{%- endfor -%}
{%- elif content is not none -%}{{ content }}
{%- endif -%}
{%- endmacro -%}
{%- set ns = namespace(last_user=-1) -%}
{%- for m in messages -%}{%- if m.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}{%- endfor -%}
{%- for m in messages -%}
{%- if m.role == 'system' -%}
{{ '<|system|>\\n' + text_of(m.content) }}
{%- elif m.role == 'user' -%}
{%- set text = text_of(m.content) -%}
{{ '<|user|>\\n' + text }}
{{- '/nothink' if enable_thinking is defined and not enable_thinking and not text.endswith('/nothink') else '' }}
{%- elif m.role == 'assistant' -%}
{%- set content = text_of(m.content) -%}
{%- set reasoning = m.reasoning_content if m.reasoning_content is string else '' -%}
{%- if m.reasoning_content is not string and '</think>' in content -%}
{%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') -%}
{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}
{%- endif -%}
{{ '<|assistant|>' }}
{%- if loop.index0 > ns.last_user and reasoning -%}
{{ '\\n<think>' + reasoning.strip() + '</think>' }}
{%- else -%}
{{ '\\n<think></think>' }}
{%- endif -%}
{%- if content.strip() -%}{{ '\\n' + content.strip() }}{%- endif -%}
{%- for tc in m.tool_calls or [] -%}
{%- set call = tc.function if tc.function is defined else tc -%}
{{ '\\n<tool_call>' + call.name }}
{%- for k, v in (call.arguments if call.arguments is mapping else {}).items() -%}
{{ '\\n<arg_key>' + k + '</arg_key>\\n<arg_value>' }}{{ v if v is string else v | tojson(ensure_ascii=False) }}{{ '</arg_value>' }}
{%- endfor -%}
{{ '</tool_call>' }}
{%- endfor -%}
{%- elif m.role == 'tool' -%}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}{{ '<|observation|>' }}{%- endif -%}
{{ '\\n<tool_response>\\n' + text_of(m.content) + '\\n</tool_response>' }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ '<|assistant|>' }}{{ '\\n<think></think>' if enable_thinking is defined and not enable_thinking else '' }}
{%- endif -%}"""

# the tiny GLM-4.5-Air network (scaled from hidden 4096, 96 heads, 8 KV heads, 46 layers, 128 experts of
# 1408, 8 per token, 1 shared, first layer dense, one MTP layer)
GLM45_EXPERTS, GLM45_EXPERTS_PER_TOK, GLM45_MOE_FFN = 8, 2, 32


def _glm45_tokenizer():
    from tokenizers import AddedToken

    tok = train_glm4_bpe()
    tok.add_tokens([AddedToken(t, special=t not in GLM45_NOT_SPECIAL, normalized=False)
                    for t in GLM45_SPECIALS[len(GLM4_SPECIALS):]])
    return tok


def _glm45_config(vocab: int, base: int, eos: list[int]) -> dict[str, Any]:
    """config.json as the hub repository spells it (transformers 4.54: rope keys at the top level)."""
    return {
        "architectures": ["Glm4MoeForCausalLM"], "attention_bias": True, "attention_dropout": 0.0,
        "pad_token_id": base, "eos_token_id": eos, "head_dim": HEAD_DIM, "hidden_act": "silu",
        "hidden_size": HIDDEN, "partial_rotary_factor": 0.5, "initializer_range": 0.02, "intermediate_size": FFN,
        "max_position_embeddings": 2048, "model_type": "glm4_moe", "moe_intermediate_size": GLM45_MOE_FFN,
        "norm_topk_prob": True, "num_attention_heads": HEADS, "n_group": 1, "topk_group": 1,
        "n_routed_experts": GLM45_EXPERTS, "n_shared_experts": 1, "routed_scaling_factor": 1.0,
        "num_experts_per_tok": GLM45_EXPERTS_PER_TOK, "first_k_dense_replace": 1, "num_hidden_layers": LAYERS,
        "num_key_value_heads": KV_GROUPS, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 1000000,
        "num_nextn_predict_layers": 1, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.54.0", "use_cache": True, "use_qk_norm": False, "vocab_size": vocab}


def _glm45_weights(config: dict[str, Any], seed: int) -> dict[str, Any]:
    """Random bf16 tensors by transformers' Glm4MoeForCausalLM.save_pretrained, plus the MTP layer the
    hub checkpoint appends (model.layers.{num_hidden_layers}: a decoder layer with eh_proj, enorm, hnorm,
    shared_head), which transformers does not build."""
    import tempfile

    import torch
    from safetensors.torch import load_file
    from transformers import Glm4MoeConfig, Glm4MoeForCausalLM

    torch.manual_seed(seed)
    keys = {k: v for k, v in config.items() if k not in ("architectures", "torch_dtype", "transformers_version")}
    model = Glm4MoeForCausalLM(Glm4MoeConfig(**keys)).eval()
    with torch.no_grad():  # off HF's defaults (norms 1, biases 0, router near 0) so a misplaced tensor shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
            elif name.endswith("mlp.gate.weight"):
                p.normal_(0.0, 0.2)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.normal_(0.0, 0.1)
    with tempfile.TemporaryDirectory() as tmp:
        model.to(torch.bfloat16).save_pretrained(tmp)
        tensors = {}
        for f in sorted(Path(tmp).glob("*.safetensors")):
            tensors.update(load_file(str(f)))
    n, last = LAYERS, f"model.layers.{LAYERS - 1}."
    mtp = {f"model.layers.{n}." + k[len(last):]: v.clone() for k, v in tensors.items() if k.startswith(last)}
    mtp.update({f"model.layers.{n}.eh_proj.weight": torch.randn(HIDDEN, 2 * HIDDEN, dtype=torch.bfloat16) * 0.02,
                f"model.layers.{n}.enorm.weight": torch.ones(HIDDEN, dtype=torch.bfloat16),
                f"model.layers.{n}.hnorm.weight": torch.ones(HIDDEN, dtype=torch.bfloat16),
                f"model.layers.{n}.shared_head.norm.weight": torch.ones(HIDDEN, dtype=torch.bfloat16)})
    return {**tensors, **mtp}


def _build_glm45_air(dest: Path) -> None:
    tok = _glm45_tokenizer()
    tok.save(str(dest / "tokenizer.json"))
    base = tok.get_vocab_size(with_added_tokens=False)
    vocab = _round_up(base + len(GLM45_SPECIALS))
    eos = [base, base + 7, base + 9]  # <|endoftext|>, <|user|>, <|observation|>
    config = _glm45_config(vocab, base, eos)
    _write_json(dest / "config.json", config)
    _write_shards(dest, _glm45_weights(config, seed=8), num_shards=3)
    _write_json(dest / "generation_config.json", {"_from_model_config": True, "eos_token_id": eos,
                                                   "pad_token_id": base, "transformers_version": "4.54.0"})
    (dest / "chat_template.jinja").write_text(GLM45_CHAT, encoding="utf-8")
    tok_config = _glm4_tokenizer_config(base, GLM45_CHAT, tokenizer_class="PreTrainedTokenizerFast")
    del tok_config["chat_template"]  # the hub repository ships it as chat_template.jinja
    tok_config["added_tokens_decoder"] = {
        str(base + i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                        "special": t not in GLM45_NOT_SPECIAL} for i, t in enumerate(GLM45_SPECIALS)}
    tok_config["additional_special_tokens"] = [t for t in GLM45_SPECIALS[1:] if t not in GLM45_NOT_SPECIAL]
    _write_json(dest / "tokenizer_config.json", tok_config)
    _write_repo_text(dest, [".gitattributes", "README.md"], [])


def build_glm4_moe_replica(dest: str | Path) -> str:
    """zai-org/GLM-4.5-Air: model_type glm4_moe (routed + shared experts, sigmoid router with score-correction
    bias, first layer dense, one MTP layer in the weights), bf16 safetensors shards, tokenizer.json with
    GLM-4.5's control tokens, chat_template.jinja with `<think>` and XML tool calls."""
    return _cached(dest, _build_glm45_air)
