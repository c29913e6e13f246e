"""benchmarks/bench_peers.py: the load generator's statistics, the server command lines, and one real wave
against the shared live glmserve (the same streaming path the side-by-side figures come from)."""
from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import httpx
import pytest

from benchmarks.bench_peers import (CONFIGS, StreamResult, format_table, llama_context_size, parse_configs,
                                    parse_levels, run_level, server_command, summarize)


def test_summarize_aggregate_is_tokens_over_wall_and_per_stream_is_the_median():
    results = [StreamResult(tokens=100, started=0.0, first_token=0.5, finished=10.0),   # 10 tok/s
               StreamResult(tokens=100, started=0.0, first_token=1.0, finished=5.0),    # 20 tok/s
               StreamResult(tokens=50, started=2.0, first_token=2.2, finished=12.0)]    # 5 tok/s
    stats = summarize(3, results, wall_s=12.0)
    assert stats.tokens == 250 and stats.requests == 3
    assert stats.aggregate_tok_s == pytest.approx(250 / 12.0)
    assert stats.median_stream_tok_s == pytest.approx(10.0)
    assert stats.median_ttft_s == pytest.approx(0.5)


def test_summarize_refuses_an_empty_wave_and_a_zero_wall():
    with pytest.raises(ValueError):
        summarize(1, [], 1.0)
    with pytest.raises(ValueError):
        summarize(1, [StreamResult(1, 0.0, 0.1, 0.2)], 0.0)


def test_llama_context_gives_every_slot_prompt_plus_answer():
    ctx = llama_context_size(32, 128, 128)
    assert ctx == 32 * 256
    assert llama_context_size(32, 100, 200) // 32 >= 300  # rounded up, never below what a slot needs
    assert llama_context_size(4, 1, 1) == 4 * 256


def test_parsers_refuse_unknown_configs_and_bad_levels():
    assert parse_levels("1,32") == [1, 32]
    assert parse_configs("glm-fp32,llama-f32") == ["glm-fp32", "llama-f32"]
    for bad in ("0,32", "", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_levels(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_configs("glm-fp64")


def test_server_commands_name_threads_slots_and_weights():
    args = argparse.Namespace(streams=[1, 32], max_tokens=128, threads=2, glm_kv_cache_memory="512MiB",
                              llama_dir=Path("/opt/llama"))
    glm = server_command(CONFIGS["glm-int8"], 9000, args, {})
    assert glm[glm.index("--quantization") + 1] == "int8" and glm[glm.index("--dtype") + 1] == "float32"
    assert glm[glm.index("--num-threads") + 1] == "2" and glm[glm.index("--max-num-seqs") + 1] == "32"
    llama = server_command(CONFIGS["llama-q8_0"], 9001, args, {"Q8_0": Path("/g/m.Q8_0.gguf")})
    assert llama[0] == "/opt/llama/bin/llama-server" and llama[llama.index("-m") + 1] == "/g/m.Q8_0.gguf"
    assert llama[llama.index("-np") + 1] == "32" and llama[llama.index("--threads") + 1] == "2"
    assert int(llama[llama.index("-c") + 1]) == llama_context_size(32, 128, 128)


def test_format_table_has_a_row_per_server_and_a_column_pair_per_level():
    level = {"streams": 1, "aggregate_tok_s": 12.34, "median_stream_tok_s": 12.0}
    rows = [{"label": "a", "weight_bytes": 5e8, "bound_tok_s": 40.0, "levels": [level, {**level, "streams": 32}]},
            {"label": "b", "weight_bytes": 1e8, "bound_tok_s": 200.0, "levels": [level]}]
    lines = format_table(rows).splitlines()
    assert len(lines) == 4 and lines[0].count("|") == 8
    assert "| a | 500 | 40.0 | 12.3 | 12.0 | 12.3 | 12.0 |" == lines[2]
    assert lines[3].endswith("| - | - |")


def test_a_wave_against_the_live_server_counts_every_requested_token(live_server):
    model = httpx.get(f"{live_server.base_url}/v1/models").json()["data"][0]["id"]
    stats = asyncio.run(run_level(live_server.base_url, model, streams=3, max_tokens=6, single_requests=1))
    # ignore_eos: every stream runs to max_tokens, counted from the server's usage chunk
    assert stats.requests == 3 and stats.tokens == 3 * 6
    assert stats.aggregate_tok_s > 0 and stats.median_ttft_s > 0
    single = asyncio.run(run_level(live_server.base_url, model, streams=1, max_tokens=4, single_requests=2))
    assert single.requests == 2 and single.tokens == 2 * 4
