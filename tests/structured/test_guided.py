"""The grammar logits processor: every output it allows parses and validates, it resynchronizes from the
token list alone (n choices, recompute after preemption), and constrained and free requests share steps."""
from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from model import EngineConfig, LLMEngine, SamplingParams, StructuredOutputError, StructuredOutputs, load_model

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 8},
    "count": {"type": "integer", "minimum": 0, "maximum": 99},
    "ok": {"type": "boolean"},
    "tags": {"type": "array", "items": {"type": "string", "enum": ["red", "green"]}, "maxItems": 3}},
    "required": ["name", "count", "ok", "tags"]}


@pytest.fixture(scope="module")
def outputs(default_tokenizer) -> StructuredOutputs:
    return StructuredOutputs.for_tokenizer(default_tokenizer, default_tokenizer.vocab_size)


def _decode_random(processor, eos: tuple[int, ...], seed: int, max_tokens: int = 200, vocab_size: int = 49152,
                   bias: torch.Tensor | None = None) -> list[int]:
    """Samples from random logits through the processor until a stop token (a model-free decode loop)."""
    gen = torch.Generator().manual_seed(seed)
    out: list[int] = []
    while len(out) < max_tokens:
        logits = torch.randn(vocab_size, generator=gen) * 3 + (bias if bias is not None else 0)
        row = processor(list(out), logits)
        token = int(torch.multinomial(torch.softmax(row, -1), 1, generator=gen))
        if token in eos:
            return out
        out.append(token)
    raise AssertionError("grammar did not finish within max_tokens")


@pytest.mark.parametrize("seed", range(6))
def test_random_logits_always_give_schema_valid_json(outputs: StructuredOutputs, default_tokenizer, seed: int) -> None:
    processor = outputs.processor(outputs.json_schema(SCHEMA))
    ids = _decode_random(processor, default_tokenizer.eos_token_ids, seed)
    jsonschema.validate(json.loads(default_tokenizer.decode(ids)), SCHEMA)


def test_bounded_strings_never_hold_raw_control_characters(glm_tokenizer_dir: str) -> None:
    """xgrammar's length-bounded strings admit raw U+0000..U+001F; the processor must not. A byte-level
    vocabulary of 400 tokens, logits pushed towards the control bytes, makes them likely."""
    from model import Tokenizer

    tokenizer = Tokenizer(glm_tokenizer_dir)
    outputs = StructuredOutputs.for_tokenizer(tokenizer, tokenizer.vocab_size)
    control = [i for i in range(tokenizer.vocab_size)
               if any(ord(c) < 32 and c != "\n" for c in tokenizer.decode([i], skip_special_tokens=False))]
    assert control
    bias = torch.zeros(tokenizer.vocab_size)
    bias[control] = 8.0
    schema = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 12},
                                               "b": {"type": "string", "minLength": 3, "maxLength": 6}},
              "required": ["a", "b"]}
    for seed in range(5):
        processor = outputs.processor(outputs.json_schema(schema))
        ids = _decode_random(processor, tokenizer.eos_token_ids, seed, vocab_size=tokenizer.vocab_size, bias=bias)
        jsonschema.validate(json.loads(tokenizer.decode(ids)), schema)


def test_choices_sharing_one_processor_diverge_independently(outputs: StructuredOutputs, default_tokenizer) -> None:
    processor = outputs.processor(outputs.json_schema(SCHEMA), n=3)
    gens = [torch.Generator().manual_seed(s) for s in range(3)]
    outs: list[list[int]] = [[], [], []]
    done = [False] * 3
    while not all(done):  # interleaved like the sampler's rows: one call per live choice per step
        for i in range(3):
            if done[i]:
                continue
            row = processor(list(outs[i]), torch.randn(49152, generator=gens[i]) * 3)
            token = int(torch.multinomial(torch.softmax(row, -1), 1, generator=gens[i]))
            done[i] = token in default_tokenizer.eos_token_ids
            outs[i] += [] if done[i] else [token]
    texts = [default_tokenizer.decode(o) for o in outs]
    assert len(set(texts)) == 3
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMA)


def test_mask_depends_only_on_the_token_list(outputs: StructuredOutputs, default_tokenizer) -> None:
    grammar = outputs.json_schema(SCHEMA)
    ids = default_tokenizer.encode('{"name": "ab", "count": 7, "ok": true, "tags": ["red"')
    stepwise = outputs.processor(grammar)
    for k in range(len(ids)):
        stepwise(ids[:k], torch.zeros(49152))
    fresh = outputs.processor(grammar)  # e.g. a request recomputed after preemption
    a = stepwise(ids, torch.zeros(49152))
    b = fresh(ids, torch.zeros(49152))
    again = stepwise(ids, torch.zeros(49152))  # the same step asked twice
    assert torch.equal(a, b) and torch.equal(a, again)
    allowed = {default_tokenizer.decode([int(t)]) for t in torch.nonzero(a > -1e30).flatten()}
    assert "]" in allowed and "," in allowed and "}" not in allowed


def test_grammars_are_compiled_once_per_schema(outputs: StructuredOutputs) -> None:
    assert outputs.json_schema(SCHEMA) is outputs.json_schema(json.loads(json.dumps(SCHEMA)))
    assert outputs.json_schema(SCHEMA) is not outputs.json_schema({**SCHEMA, "required": ["name"]})


def test_unusable_schema_is_a_structured_output_error(outputs: StructuredOutputs) -> None:
    with pytest.raises(StructuredOutputError) as err:
        outputs.json_schema({"type": "object", "properties": {"a": {"$ref": "#/definitions/missing"}}})
    assert err.value.param == "response_format"


# ---- in the engine (random tiny Llama with the default tokenizer) --------------------------------------
def _engine(path: str, **kw) -> LLMEngine:
    return LLMEngine.from_model(path, EngineConfig(**{**dict(max_num_seqs=8, kv_cache_memory=16 << 20), **kw}))


def _run(engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]]) -> tuple[dict, list[set]]:
    for rid, (prompt, params) in requests.items():
        engine.add_request(rid, prompt, params)
    tokens: dict[str, list[int]] = {rid: [] for rid in requests}
    steps: list[set[str]] = []
    while engine.has_unfinished():
        outs = engine.step()
        steps.append({o.request_id for o in outs})
        for o in outs:
            tokens[o.request_id] += o.token_ids
    return tokens, steps


def _constrained(engine: LLMEngine, max_tokens: int = 60) -> SamplingParams:
    so = StructuredOutputs.for_tokenizer(engine.tokenizer, engine.model_config.vocab_size)
    return SamplingParams(temperature=0, max_tokens=max_tokens, logits_processors=(so.processor(so.json_schema(SCHEMA)),))


def _valid(engine: LLMEngine, ids: list[int]) -> None:
    ids = [t for t in ids if t not in engine.tokenizer.eos_token_ids]
    jsonschema.validate(json.loads(engine.tokenizer.decode(ids)), SCHEMA)


def test_constrained_and_free_requests_share_steps_and_free_output_is_unchanged(tiny_llama_dir: str) -> None:
    engine = _engine(tiny_llama_dir)
    prompt = engine.tokenizer.encode("Reply in JSON please.")
    free = SamplingParams(temperature=0, max_tokens=24, min_tokens=24)
    alone, _ = _run(engine, {"free": (prompt, free)})
    tokens, steps = _run(engine, {"json": (prompt, _constrained(engine)), "free": (prompt, free)})
    assert any(step == {"json", "free"} for step in steps)
    assert tokens["free"] == alone["free"]
    _valid(engine, tokens["json"])


def test_preempted_constrained_requests_match_an_unpreempted_run(tiny_llama_dir: str) -> None:
    from model.engine.model_runner import kv_bytes_per_block

    prompts = {f"r{i}": [5 + i] * 40 for i in range(4)}
    roomy = _engine(tiny_llama_dir)
    expected, _ = _run(roomy, {rid: (p, _constrained(roomy)) for rid, p in prompts.items()})
    # 12 blocks of 16 tokens: four requests of 40 + ~40 tokens cannot all stay resident
    block = kv_bytes_per_block(load_model(tiny_llama_dir).config, 16, torch.float32)
    tight = _engine(tiny_llama_dir, max_num_seqs=4, kv_cache_memory=12 * block)
    got, _ = _run(tight, {rid: (p, _constrained(tight)) for rid, p in prompts.items()})
    assert tight.scheduler.num_preemptions > 0
    assert got == expected
    for ids in got.values():
        _valid(tight, ids)
