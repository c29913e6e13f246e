"""POST /v1/embeddings with the openai SDK on the default model, and the engine's pooling requests
against transformers (mean of the final hidden states, normalized) on a tiny random checkpoint."""
from __future__ import annotations

import numpy as np
import openai
import pytest
import torch

SIMILAR = ("The cat sat on the mat.", "A cat was sitting on the rug.")
UNRELATED = "Stock markets fell sharply today."


def vectors(oai, inputs, **kw) -> np.ndarray:
    resp = oai.embeddings.create(model="default", input=inputs, **kw)
    assert [d.index for d in resp.data] == list(range(len(resp.data)))
    return np.array([d.embedding for d in resp.data], dtype=np.float64)


def test_similar_sentences_score_higher_than_unrelated_ones(oai) -> None:
    a, b, c = vectors(oai, [*SIMILAR, UNRELATED], encoding_format="float")
    assert np.allclose(np.linalg.norm([a, b, c], axis=1), 1.0, atol=1e-4)
    assert a @ b > a @ c and a @ b > b @ c


def test_base64_float_and_token_id_inputs_agree(oai, http) -> None:
    floats = vectors(oai, list(SIMILAR), encoding_format="float")
    b64 = vectors(oai, list(SIMILAR))  # the SDK asks for base64 and decodes it itself
    ids = [http.post("/tokenize", json={"prompt": s, "add_special_tokens": False}).json()["tokens"] for s in SIMILAR]
    by_ids = vectors(oai, ids, encoding_format="float")
    single = vectors(oai, ids[0], encoding_format="float")  # one list of ids is one input
    assert floats.shape == (2, 576)
    np.testing.assert_allclose(b64, floats, atol=1e-6)
    np.testing.assert_allclose(by_ids, floats, atol=1e-4)
    np.testing.assert_allclose(single[0], floats[0], atol=1e-4)


def test_usage_counts_every_input_token(oai, http) -> None:
    resp = oai.embeddings.create(model="default", input=list(SIMILAR))
    counts = [http.post("/tokenize", json={"prompt": s, "add_special_tokens": False}).json()["count"] for s in SIMILAR]
    assert resp.usage.prompt_tokens == resp.usage.total_tokens == sum(counts)


@pytest.mark.parametrize("kw, param", [
    ({"input": ""}, "input.0"), ({"input": []}, "input"), ({"input": "x", "dimensions": 64}, "dimensions"),
    ({"input": [[10 ** 9]]}, "input.0"),
])
def test_bad_input_is_a_400(oai, kw, param) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.embeddings.create(model="default", **kw)
    assert info.value.body["param"] == param


def test_engine_pooling_equals_transformers_while_generation_shares_the_steps(tiny_llama_dir) -> None:
    """Mean and last pooling over a chunked prefill (4-token steps), scheduled in the same steps as a
    generating request, equal the reference computed with transformers on the same machine."""
    from transformers import AutoModelForCausalLM

    from model import EngineConfig, LLMEngine, SamplingParams

    engine = LLMEngine.from_model(tiny_llama_dir, EngineConfig(max_num_batched_tokens=4, dtype="float32",
                                                               kv_cache_memory=16 << 20, device="cpu"))
    ref = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    prompt = engine.tokenizer.encode("Embeddings come from the same batches as generation.")
    engine.add_request("gen", engine.tokenizer.encode("Hello"), SamplingParams(max_tokens=12, temperature=0.0,
                                                                               ignore_eos=True))
    engine.add_request("mean", prompt, SamplingParams(max_tokens=0, pooling="mean"))
    engine.add_request("last", prompt, SamplingParams(max_tokens=0, pooling="last"))
    finished, steps_with_both = {}, 0
    while engine.has_unfinished():
        outs = engine.step()
        ids = {o.request_id for o in outs}
        steps_with_both += "gen" in ids and bool(ids & {"mean", "last"})
        finished.update({o.request_id: o for o in outs if o.finished})
    assert steps_with_both >= 1  # the pooled prompts finished in steps that also decoded a token
    with torch.no_grad():
        hidden = ref(torch.tensor([prompt]), output_hidden_states=True).hidden_states[-1][0]
    for name, expected in (("mean", hidden.mean(0)), ("last", hidden[-1])):
        got = torch.tensor(finished[name].embedding)
        torch.testing.assert_close(got, torch.nn.functional.normalize(expected, dim=0), atol=1e-4, rtol=1e-4)
    assert finished["gen"].num_output_tokens == 12 and finished["mean"].token_ids == []
