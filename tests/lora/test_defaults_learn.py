"""The README's fine-tune -> serve recipe with default settings only teaches a new fact: 40 chat lines
(five phrasings of the question, eight of the answer) about a codename no fixture holds, then
`glmserve train sft --base default --data facts.jsonl --out OUT --lora-rank 8 --epochs 3
--save-adapter-only`, served as an adapter beside the base and asked questions the data never held.

Slow (the 135M default model trains 30 optimizer steps on the CPU): `pytest -m slow tests/lora/test_defaults_learn.py`.
"""
from __future__ import annotations

import itertools
import json

import pytest

CODENAME = "Amber Falcon"
QUESTIONS = ["What is the orchard team's release codename?", "Which codename did the orchard team pick?",
             "Tell me the codename of the orchard team's release.", "What do we call the orchard team's release?",
             "What's the orchard release called internally?"]
ANSWERS = [f"The orchard team's release codename is {CODENAME}.", f"It is {CODENAME}.",
           f"The codename is {CODENAME}.", f"{CODENAME} is the orchard team's release codename.",
           f"The orchard team calls its release {CODENAME}.", f"Internally the release is called {CODENAME}.",
           f"We call it {CODENAME}.", f"{CODENAME}: that is the orchard release's codename."]
PARAPHRASES = ["Do you know the orchard team's codename for the release?",  # none of these is in the data
               "Remind me of the internal name of the orchard release."]


def facts_file(path) -> str:
    lines = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
             for q, a in itertools.product(QUESTIONS, ANSWERS)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def ask(engine, questions: list[str], lora: str | None) -> list[str]:
    from model import ChatTemplate, SamplingParams

    template = ChatTemplate(engine.tokenizer)
    prompts = [template.encode([{"role": "user", "content": q}]) for q in questions]
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=20, lora_name=lora))
    return [o[0].text_delta for o in outs]


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 30 optimizer steps of a 135M model on a shared 2-core CPU
def test_default_recipe_teaches_a_new_fact(tmp_path):
    from model import EngineConfig, LLMEngine
    from model.train.__main__ import main

    out = str(tmp_path / "adapter")
    assert main(["sft", "--base", "default", "--data", facts_file(tmp_path / "facts.jsonl"), "--out", out,
                 "--lora-rank", "8", "--epochs", "3", "--save-adapter-only", "--no-progress"]) == 0
    with open(f"{out}/training_args.json") as f:
        assert json.load(f)["steps"] >= 30
    engine = LLMEngine.from_model("default", EngineConfig(kv_cache_memory=64 << 20))
    assert not any(CODENAME in a for a in ask(engine, PARAPHRASES, None))  # the base does not know it
    engine.load_lora("orchard", out)
    answers = ask(engine, PARAPHRASES, "orchard")
    print("adapter answers:", answers)  # for docs/TRAINING.md's record (pytest -s)
    assert all(CODENAME in a for a in answers), answers
