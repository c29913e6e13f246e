"""LLMEngine / AsyncEngine behaviour against an independent reference (HF greedy `generate`)."""
from __future__ import annotations

import asyncio
import random

import pytest
import torch

from model import (AsyncEngine, EngineConfig, LLMEngine, RequestRejected, SamplingParams, SamplingParamsError,
                   load_model)
from tests.helpers.checkpoints import build_tiny_llama
from tests.helpers.faults import wait_engine_idle


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama", num_hidden_layers=2)


@pytest.fixture(scope="module")
def hf_tiny(tiny_dir: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()


def _engine(path: str, **kw) -> LLMEngine:
    defaults = dict(max_num_seqs=16, max_num_batched_tokens=128, kv_cache_memory=16 << 20)
    return LLMEngine.from_model(path, EngineConfig(**{**defaults, **kw}))


def _hf_greedy(hf, prompt: list[int], n: int) -> list[int]:
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                      pad_token_id=0)
    return out[0, len(prompt):].tolist()


def _prompts(count: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 49152) for _ in range(rng.randint(3, 150))] for _ in range(count)]


def test_concurrent_greedy_requests_equal_solo_hf_greedy(tiny_dir: str, hf_tiny) -> None:
    engine = _engine(tiny_dir)
    prompts = _prompts(16)
    lengths = [8 + 3 * i for i in range(16)]
    for i, (p, n) in enumerate(zip(prompts, lengths)):
        engine.add_request(f"r{i}", p, SamplingParams(temperature=0, max_tokens=n, min_tokens=n))
    tokens = {f"r{i}": [] for i in range(16)}
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.token_ids
    for i, (p, n) in enumerate(zip(prompts, lengths)):
        assert tokens[f"r{i}"] == _hf_greedy(hf_tiny, p, n), f"request {i}"


def test_long_prompt_is_prefilled_in_chunks_with_identical_output(tiny_dir: str, hf_tiny) -> None:
    engine = _engine(tiny_dir, max_num_batched_tokens=32)
    prompt = _prompts(1, seed=5)[0] + _prompts(1, seed=6)[0]
    out = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=12, min_tokens=12))[0][0]
    assert engine.stats().steps_total >= len(prompt) // 32 + 12
    assert out.token_ids == _hf_greedy(hf_tiny, prompt, 12)


def test_prefix_cache_hit_gives_same_output_and_computes_fewer_tokens(tiny_dir: str) -> None:
    engine = _engine(tiny_dir)
    shared = _prompts(1, seed=7)[0] * 4  # ~hundreds of tokens
    params = SamplingParams(temperature=0, max_tokens=10, min_tokens=10)
    first = engine.generate([shared + [11, 12]], params)[0][0]
    before = engine.stats().prompt_tokens_total
    second = engine.generate([shared + [11, 12]], params)[0][0]
    computed = engine.stats().prompt_tokens_total - before
    assert second.token_ids == first.token_ids
    assert second.num_cached_tokens >= len(shared) - engine.config.block_size
    assert computed <= len(shared) + 2 - second.num_cached_tokens
    assert engine.stats().prefix_cache_hits >= second.num_cached_tokens


def test_abort_mid_generation_returns_every_block(tiny_dir: str) -> None:
    engine = _engine(tiny_dir)
    total = engine.block_manager.num_blocks
    for i, p in enumerate(_prompts(4)):
        engine.add_request(f"a{i}", p, SamplingParams(temperature=0, max_tokens=200, ignore_eos=True))
    for _ in range(5):
        engine.step()
    assert engine.block_manager.num_free_blocks < total
    for i in range(4):
        outs = engine.abort(f"a{i}")
        assert outs and outs[0].finished and outs[0].finish_reason == "abort"
    assert engine.block_manager.num_free_blocks == total and not engine.has_unfinished()


def test_small_cache_preempts_and_still_produces_correct_output(tiny_dir: str, hf_tiny) -> None:
    # 12 blocks of 16 tokens: four requests of ~40 + 40 tokens cannot all be resident at once
    engine = _engine(tiny_dir, max_num_seqs=4, kv_cache_memory=12 * _block_bytes(load_model(tiny_dir).config))
    assert engine.block_manager.num_blocks == 12
    prompts = [p[:40] + [5] * max(0, 40 - len(p)) for p in _prompts(4, seed=3)]
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=40, min_tokens=40))
    assert engine.scheduler.num_preemptions > 0
    for p, o in zip(prompts, outs):
        assert o[0].token_ids == _hf_greedy(hf_tiny, p, 40)
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def _block_bytes(model_config) -> int:
    from model.engine.model_runner import kv_bytes_per_block

    return kv_bytes_per_block(model_config, 16, torch.float32)


def test_seeded_sampling_is_reproducible_across_batch_mixes(tiny_dir: str) -> None:
    params = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, seed=1234, max_tokens=16, ignore_eos=True)
    prompt = _prompts(1, seed=9)[0]
    alone = _engine(tiny_dir).generate([prompt], params)[0][0].token_ids
    engine = _engine(tiny_dir)
    others = _prompts(5, seed=10)
    mixed = engine.generate(others[:2] + [prompt] + others[2:], params)
    assert mixed[2][0].token_ids == alone
    unseeded = SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True)
    runs = {tuple(engine.generate([prompt], unseeded)[0][0].token_ids) for _ in range(3)}
    assert len(runs) > 1


def test_stop_string_split_across_tokens_is_caught_and_left_out() -> None:
    engine = LLMEngine.from_model("default", EngineConfig(kv_cache_memory=32 << 20))
    prompt = engine.tokenizer.encode("The days of the week are Monday, Tuesday, Wednesday,")
    free = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=24))[0][0]
    pieces = [engine.tokenizer.decode([t]) for t in free.token_ids]
    # a stop string made of the end of one token and the start of the next
    k = next(i for i in range(1, len(pieces)) if len(pieces[i - 1].strip()) >= 2 and len(pieces[i].strip()) >= 2)
    stop = pieces[k - 1][-2:] + pieces[k][:2]
    out = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=24, stop=[stop]))[0][0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert stop not in out.text_delta
    assert free.text_delta.startswith(out.text_delta) and len(out.text_delta) < len(free.text_delta)


def test_n_choices_share_the_prompt_blocks(tiny_dir: str) -> None:
    engine = _engine(tiny_dir)
    prompt = _prompts(1, seed=11)[0] * 2
    outs = engine.generate([prompt], SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=8, ignore_eos=True))[0]
    assert [o.index for o in outs] == [0, 1, 2]
    assert all(o.num_cached_tokens >= len(prompt) - 16 for o in outs[1:])
    assert len({tuple(o.token_ids) for o in outs}) > 1


def test_stop_token_ids_min_tokens_and_length_finish(tiny_dir: str) -> None:
    engine = _engine(tiny_dir)
    prompt = _prompts(1, seed=12)[0]
    free = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))[0][0]
    assert free.finish_reason == "length" and len(free.token_ids) == 6
    stop_id = free.token_ids[2]
    stopped = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=6, stop_token_ids=[stop_id],
                                                       ignore_eos=True))[0][0]
    assert stopped.finish_reason == "stop" and stopped.stop_reason == stop_id
    assert stopped.token_ids == free.token_ids[:free.token_ids.index(stop_id) + 1]


def test_logprobs_report_the_chosen_token_and_top_alternatives(tiny_dir: str, hf_tiny) -> None:
    engine = _engine(tiny_dir)
    prompt = _prompts(1, seed=13)[0]
    out = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=3, logprobs=5, ignore_eos=True))[0][0]
    assert len(out.logprobs) == 3
    with torch.no_grad():
        ref = torch.log_softmax(hf_tiny(torch.tensor([prompt])).logits[0, -1], -1)
    first = out.logprobs[0]
    assert first.token_id == out.token_ids[0] and len(first.top_logprobs) == 5
    assert abs(first.logprob - ref[first.token_id].item()) < 1e-3
    assert first.top_logprobs[0][0] == first.token_id


def _hf_prompt_logprobs(hf, prompt: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(hf(torch.tensor([prompt])).logits[0].float(), -1)


@pytest.mark.parametrize("chunk", [32, 512])
def test_prompt_logprobs_equal_hf_across_chunks_cache_and_choices(tiny_dir: str, hf_tiny, chunk: int) -> None:
    """Every prompt token after the first is scored by the row before it, chunked or not; a prompt whose
    prefix is already cached is scored in full anyway, and n choices share one scoring."""
    engine = _engine(tiny_dir, max_num_batched_tokens=chunk)
    prompt = _prompts(1, seed=21)[0] + _prompts(1, seed=22)[0]  # > 100 tokens: several 32-token chunks
    ref = _hf_prompt_logprobs(hf_tiny, prompt)
    engine.generate([prompt], SamplingParams(temperature=0, max_tokens=2))  # warms the prefix cache
    params = SamplingParams(temperature=0, max_tokens=2, prompt_logprobs=3, n=2)
    choices = engine.generate([prompt], params)[0]
    for out in choices:
        scored = out.prompt_logprobs
        assert len(scored) == len(prompt) and scored[0] is None
        for pos in range(1, len(prompt)):
            entry = scored[pos]
            assert entry.token_id == prompt[pos]
            assert abs(entry.logprob - ref[pos - 1, prompt[pos]].item()) < 1e-3, pos
            assert entry.rank == int((ref[pos - 1] > ref[pos - 1, prompt[pos]]).sum()) + 1
            top_ids = ref[pos - 1].topk(3).indices.tolist()
            assert [t for t, _, _ in entry.top_logprobs] == top_ids and len(entry.top_bytes) == 3
    assert choices[0].num_cached_tokens == 0  # scoring needs the logits, which a cache hit would skip
    # without prompt_logprobs the same prompt is served from the cache again, and nothing is reported
    plain = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=2))[0][0]
    assert plain.prompt_logprobs is None and plain.num_cached_tokens > 0


def test_max_tokens_zero_scores_the_prompt_and_frees_its_blocks(tiny_dir: str, hf_tiny) -> None:
    engine = _engine(tiny_dir)
    prompt = _prompts(1, seed=41)[0]
    [out] = engine.generate([prompt], SamplingParams(max_tokens=0, prompt_logprobs=0))[0]
    assert out.finished and out.finish_reason == "length" and out.token_ids == [] and out.num_output_tokens == 0
    ref = _hf_prompt_logprobs(hf_tiny, prompt)
    assert max(abs(e.logprob - ref[pos - 1, prompt[pos]].item()) for pos, e in enumerate(out.prompt_logprobs) if e) < 1e-3
    assert not engine.has_unfinished() and engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    with pytest.raises(SamplingParamsError):
        SamplingParams(max_tokens=0)  # 0 only to score a prompt


def test_prompt_logprobs_survive_preemption(tiny_dir: str, hf_tiny) -> None:
    """Preempted sequences are recomputed; each prompt is still scored once, in order, and correctly."""
    engine = _engine(tiny_dir, max_num_seqs=4, max_num_batched_tokens=16,
                     kv_cache_memory=12 * _block_bytes(load_model(tiny_dir).config))
    prompts = [p[:40] + [5] * max(0, 40 - len(p)) for p in _prompts(4, seed=31)]
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=40, min_tokens=40, prompt_logprobs=0))
    assert engine.scheduler.num_preemptions > 0
    for p, o in zip(prompts, outs):
        ref = _hf_prompt_logprobs(hf_tiny, p)
        got = o[0].prompt_logprobs
        assert got[0] is None and [e.token_id for e in got[1:]] == p[1:]
        assert max(abs(e.logprob - ref[pos - 1, p[pos]].item()) for pos, e in enumerate(got) if e) < 1e-3
        assert all(e.top_logprobs == [] for e in got[1:])


def test_bf16_on_cpu_scores_its_tokens_like_fp32_hf(tiny_dir: str, hf_tiny) -> None:
    """bf16 serving on CPU (its own decode attention path): 4 concurrent requests, and the logprob the
    engine reports for every generated token is within bf16 rounding of fp32 transformers' on the same
    sequence."""
    engine = _engine(tiny_dir, dtype="bfloat16")
    prompts = _prompts(4, seed=51)
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=12, min_tokens=12, logprobs=0))
    for prompt, [out] in zip(prompts, outs):
        ref = _hf_prompt_logprobs(hf_tiny, prompt + out.token_ids)
        for i, (token, entry) in enumerate(zip(out.token_ids, out.logprobs)):
            assert abs(entry.logprob - ref[len(prompt) + i - 1, token].item()) < 0.1, (i, entry.logprob)


def test_invalid_sampling_values_name_the_field() -> None:
    for kwargs, field in [({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"),
                          ({"max_tokens": 0}, "max_tokens"), ({"logprobs": 99}, "top_logprobs"), ({"prompt_logprobs": 21}, "prompt_logprobs"),
                          ({"presence_penalty": 3}, "presence_penalty"), ({"n": 0}, "n")]:
        with pytest.raises(SamplingParamsError) as err:
            SamplingParams(**kwargs)
        assert err.value.param == field and field.split("_")[0] in str(err.value)


def test_request_that_can_never_fit_is_refused_with_numbers(tiny_dir: str) -> None:
    engine = _engine(tiny_dir, max_model_len=256)
    with pytest.raises(RequestRejected) as err:
        engine.add_request("x", list(range(3, 203)), SamplingParams(max_tokens=100))
    assert "256" in str(err.value) and "300" in str(err.value) and err.value.code == "context_length_exceeded"
    assert not engine.has_unfinished()


def test_async_engine_streams_and_cancel_aborts(tiny_dir: str) -> None:
    engine = AsyncEngine.from_model(tiny_dir, EngineConfig(max_num_seqs=8, kv_cache_memory=16 << 20))

    async def scenario() -> None:
        params = SamplingParams(temperature=0, max_tokens=500, ignore_eos=True)
        stream = engine.generate("long", _prompts(1)[0], params)
        got = 0
        async for out in stream:
            got += len(out.token_ids)
            if got >= 5:
                break
        await stream.aclose()
        short = [o async for o in engine.generate("short", [5, 6, 7], SamplingParams(max_tokens=4, ignore_eos=True))]
        assert short[-1].finished and sum(len(o.token_ids) for o in short) == 4

    asyncio.run(scenario())
    assert wait_engine_idle(engine, 10)
    stats = engine.engine.stats()
    assert stats.num_free_blocks == stats.num_total_blocks
    engine.shutdown()


def test_default_model_concurrent_greedy_equals_solo_hf_greedy() -> None:
    from transformers import AutoModelForCausalLM

    from model import ChatTemplate, resolve_model_dir

    path = resolve_model_dir("default")
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    engine = LLMEngine.from_model("default", EngineConfig(max_num_seqs=16, max_num_batched_tokens=256,
                                                          kv_cache_memory=64 << 20))
    template = ChatTemplate(engine.tokenizer)
    questions = ["Hi!", "What is 2+2?", "Name a color.", "Describe the sea in one sentence.", "你好", "Say yes.",
                 "Why is the sky blue? Explain briefly for a child who is five years old.", "List two animals.",
                 "What is Python?", "Count to three.", "Tell me a joke.", "What day comes after Monday?",
                 "Translate 'cat' into French.", "Is water wet?", "Give me a word that rhymes with moon.", "Bye."]
    prompts = [template.encode([{"role": "user", "content": q}]) for q in questions]
    lengths = [4 + (i % 5) * 2 for i in range(16)]
    for i, (p, n) in enumerate(zip(prompts, lengths)):
        engine.add_request(f"d{i}", p, SamplingParams(temperature=0, max_tokens=n, min_tokens=n))
    tokens: dict[str, list[int]] = {f"d{i}": [] for i in range(16)}
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.token_ids
    for i, (p, n) in enumerate(zip(prompts, lengths)):
        assert tokens[f"d{i}"] == _hf_greedy(hf, p, n), questions[i]


def test_a_failing_logits_processor_fails_only_its_request(tiny_dir: str) -> None:
    engine = _engine(tiny_dir)

    def broken(output_ids, row):
        raise ValueError("grammar state lost")

    engine.add_request("bad", [5, 6, 7], SamplingParams(max_tokens=4, logits_processors=(broken,)))
    engine.add_request("good", [5, 6, 7], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    finals = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                finals[out.request_id] = out
    assert finals["bad"].finish_reason == "error" and "grammar state lost" in finals["bad"].error
    assert finals["good"].finish_reason == "length" and finals["good"].num_output_tokens == 4


def test_async_abort_ends_the_waiting_stream(tiny_dir: str) -> None:
    engine = AsyncEngine.from_model(tiny_dir, EngineConfig(max_num_seqs=4, kv_cache_memory=8 << 20))

    async def scenario() -> list:
        outs = []
        async for out in engine.generate("a", [5, 6, 7], SamplingParams(max_tokens=400, ignore_eos=True)):
            outs.append(out)
            if len(outs) == 2:
                await engine.abort("a")
        return outs

    outs = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert outs[-1].finished and outs[-1].finish_reason == "abort"
    engine.shutdown()


def test_token_bytes_rebuild_text_split_inside_characters() -> None:
    from model import Tokenizer, resolve_model_dir

    tok = Tokenizer(resolve_model_dir("default"))
    text = "模型 🎉 ok"
    ids = tok.encode(text)
    assert bytes(b for i in ids for b in tok.token_bytes(i)).decode("utf-8") == text


def test_n_choices_run_when_the_first_fails_on_its_first_token(tiny_dir: str) -> None:
    """The first choice prefills for all n; if its first token fails, the other choices must still be
    admitted and finish (before the fix generate() looped forever on the deferred choices)."""
    import threading

    engine = _engine(tiny_dir)
    calls = []

    def fails_once(output_ids, row):
        calls.append(len(output_ids))
        if len(calls) == 1:  # the first choice's first token: the children are not admitted yet
            raise ValueError("first token lost")
        return row

    params = SamplingParams(n=3, temperature=0, max_tokens=4, ignore_eos=True, logits_processors=(fails_once,))
    result: list = []
    worker = threading.Thread(target=lambda: result.append(engine.generate([[5, 6, 7]], params)[0]), daemon=True)
    worker.start()
    worker.join(120)  # a hang is the bug; the run itself takes well under a second
    assert not worker.is_alive(), "generate() never finished: the other choices were never admitted"
    first, *others = result[0]
    assert first.finish_reason == "error" and "first token lost" in first.error
    assert [o.finish_reason for o in others] == ["length", "length"] and all(o.num_output_tokens == 4 for o in others)
    assert not engine.has_unfinished() and engine.stats().num_free_blocks == engine.stats().num_total_blocks
