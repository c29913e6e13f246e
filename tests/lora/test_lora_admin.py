"""POST /v1/load_lora_adapter and /v1/unload_lora_adapter on a live server: admin key, 4xx for bad
adapter directories (the server keeps serving), 409 while a request uses the adapter, and the openai
SDK reaching a runtime-loaded adapter by name."""
from __future__ import annotations

import json
import shutil
import time

import httpx
import pytest

from tests.helpers.checkpoints import build_tiny_llama
from tests.helpers.live_server import ThreadedServer
from tests.lora.adapters import make_peft_adapter

ADMIN, USER = "admin-secret", "user-key"


@pytest.fixture(scope="module")
def server(tiny_llama_dir, tmp_path_factory):
    from server.settings import Settings

    root = tmp_path_factory.mktemp("allowed")
    settings = Settings(model=tiny_llama_dir, kv_cache_memory=32 << 20, self_test="off", api_key=[USER],
                        admin_key=[ADMIN], enable_lora_runtime_updates=True, lora_allowed_root=str(root),
                        max_lora_rank=8)
    with ThreadedServer(settings) as srv:
        srv.allowed_root = root
        yield srv


def post(srv, path: str, body: dict, key: str | None = ADMIN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(srv.base_url + path, json=body, headers=headers, timeout=60)


def adapter_under_root(srv, llama_adapters, name: str) -> str:
    dest = srv.allowed_root / name
    if not dest.exists():
        shutil.copytree(llama_adapters["a1"][0], dest)
    return str(dest)


def test_updates_need_the_admin_key(server, llama_adapters):
    path = adapter_under_root(server, llama_adapters, "keyed")
    assert post(server, "/v1/load_lora_adapter", {"lora_name": "k", "lora_path": path}, key=None).status_code == 401
    r = post(server, "/v1/load_lora_adapter", {"lora_name": "k", "lora_path": path}, key=USER)
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_key_required"


def test_bad_adapter_directories_are_4xx_and_the_server_keeps_serving(server, llama_adapters, tiny_llama_dir,
                                                                         tmp_path):
    root = server.allowed_root
    missing = root / "missing-weights"
    missing.mkdir(exist_ok=True)
    shutil.copy(llama_adapters["a1"][0] + "/adapter_config.json", missing)
    wrong_base = root / "other-base"
    if not wrong_base.exists():  # an adapter trained on a narrower Llama: its shapes do not fit this base
        other = build_tiny_llama(tmp_path / "narrow", hidden_size=32, intermediate_size=64)
        shutil.copytree(make_peft_adapter(other, tmp_path / "narrow-adapter", seed=5)[0], wrong_base)
    high_rank = root / "rank16"
    if not high_rank.exists():
        adapter, _ = make_peft_adapter(tiny_llama_dir, tmp_path / "r16", seed=4, rank=16)
        shutil.copytree(adapter, high_rank)
    outside = llama_adapters["a2"][0]  # a fine adapter, but not under --lora-allowed-root
    cases = {str(missing): "adapter_model.safetensors", str(wrong_base): "do not fit the base",
             str(high_rank): "above --max-lora-rank 8", outside: "outside --lora-allowed-root",
             str(root / "nowhere"): "does not exist"}
    for path, words in cases.items():
        r = post(server, "/v1/load_lora_adapter", {"lora_name": "bad", "lora_path": path})
        assert r.status_code == 400, (path, r.text)
        assert words in r.json()["error"]["message"], (path, r.json())
    r = httpx.post(server.base_url + "/v1/completions", headers={"Authorization": f"Bearer {USER}"},
                   json={"model": server.state.model_name, "prompt": [1, 2, 3], "max_tokens": 2}, timeout=60)
    assert r.status_code == 200
    assert "bad" not in {m["id"] for m in httpx.get(server.base_url + "/v1/models",
                                                    headers={"Authorization": f"Bearer {USER}"}).json()["data"]}


def test_load_use_refuse_unload_in_use_then_unload(server, llama_adapters):
    from openai import OpenAI

    path = adapter_under_root(server, llama_adapters, "runtime")
    r = post(server, "/v1/load_lora_adapter", {"lora_name": "rt", "lora_path": path})
    assert r.status_code == 200, r.text
    assert post(server, "/v1/load_lora_adapter", {"lora_name": "rt", "lora_path": path}).status_code == 400
    client = OpenAI(base_url=server.base_url + "/v1", api_key=USER)
    assert client.completions.create(model="rt", prompt=[1, 5, 6], max_tokens=3).choices[0].text is not None
    stream = client.completions.create(model="rt", prompt=[1, 7, 8], max_tokens=400, stream=True,
                                       extra_body={"ignore_eos": True})
    next(iter(stream))  # the request is running in the engine now
    r = post(server, "/v1/unload_lora_adapter", {"lora_name": "rt"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "lora_adapter_in_use"
    stream.close()  # the client leaves: the engine aborts the request, the adapter is free again
    deadline = time.monotonic() + 60
    while (r := post(server, "/v1/unload_lora_adapter", {"lora_name": "rt"})).status_code == 409:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert r.status_code == 200, r.text
    assert post(server, "/v1/unload_lora_adapter", {"lora_name": "rt"}).status_code == 404
    with pytest.raises(Exception) as err:
        client.completions.create(model="rt", prompt=[1, 5, 6], max_tokens=3)
    assert getattr(err.value, "status_code", None) == 404


def test_updates_are_off_without_the_flag(tiny_llama_dir, llama_adapters):
    from server.settings import Settings

    with ThreadedServer(Settings(model=tiny_llama_dir, kv_cache_memory=16 << 20, self_test="off")) as srv:
        r = post(srv, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": llama_adapters["a1"][0]}, key=None)
        assert r.status_code == 404 and r.json()["error"]["code"] == "lora_runtime_updates_disabled"
        assert json.loads(httpx.get(srv.base_url + "/v1/models").text)["data"][0].get("parent") is None
