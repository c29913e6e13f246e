"""Flags and GLMSERVE_* environment variables -> Settings (no model needed)."""
from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from server.__main__ import build_parser
from server.auth import APIKeyChecker
from server.settings import Settings, parse_size


def settings_from(argv: list[str]) -> Settings:
    return Settings(**vars(build_parser().parse_args(argv)))


def test_environment_sets_every_field(monkeypatch) -> None:
    monkeypatch.setenv("GLMSERVE_MAX_QUEUE", "7")
    monkeypatch.setenv("GLMSERVE_API_KEY", "a, b")
    monkeypatch.setenv("GLMSERVE_KV_CACHE_MEMORY", "2GiB")
    monkeypatch.setenv("GLMSERVE_TIMINGS", "false")
    s = settings_from([])
    assert s.max_queue == 7 and s.api_key == ["a", "b"] and s.kv_cache_memory == 2 * 1024 ** 3 and not s.timings


def test_flags_win_over_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("GLMSERVE_PORT", "9000")
    monkeypatch.setenv("GLMSERVE_MAX_QUEUE", "7")
    s = settings_from(["--port", "8123", "--api-key", "x", "--api-key", "y", "--no-timings", "--metrics-auth"])
    assert s.port == 8123 and s.max_queue == 7 and s.api_key == ["x", "y"] and not s.timings and s.metrics_auth


def test_every_issue_flag_exists() -> None:
    flags = {a for action in build_parser()._actions for a in action.option_strings}
    for flag in ("--model", "--served-model-name", "--host", "--port", "--api-key", "--api-key-file",
                 "--max-model-len", "--max-num-seqs", "--max-queue", "--kv-cache-memory", "--dtype", "--device",
                 "--drain-timeout", "--log-prompts", "--no-timings", "--metrics-auth", "--max-request-bytes"):
        assert flag in flags, flag


def test_key_file_keys_join_flag_keys(tmp_path) -> None:
    path = tmp_path / "keys"
    path.write_text("# comment\nk2\n\n k3 \n")
    assert Settings(api_key=["k1"], api_key_file=str(path)).all_api_keys() == ["k1", "k2", "k3"]


def test_invalid_values_are_refused(tmp_path) -> None:
    with pytest.raises(ValidationError):
        Settings(max_queue=0)
    with pytest.raises(ValidationError):
        Settings(api_key_file=str(tmp_path / "missing"))
    with pytest.raises(ValueError):
        parse_size("lots")


def test_served_model_name_defaults_from_the_model() -> None:
    assert Settings(model="default").model_name == "default"
    assert Settings(model="/ckpt/glm-4-9b/").model_name == "glm-4-9b"
    assert Settings(model="/x/m.gguf").model_name == "m"
    assert Settings(model="/x/m.gguf", served_model_name="chat").accepted_model_names() == {"chat", "/x/m.gguf"}


def test_key_check_accepts_only_configured_keys() -> None:
    checker = APIKeyChecker(["alpha", "beta"])
    assert checker.is_valid("alpha") and checker.is_valid("beta")
    assert not checker.is_valid("alph") and not checker.is_valid("") and not checker.is_valid(None)
    assert APIKeyChecker([]).is_valid(None)


def test_cli_help_and_bad_flag_exit_codes() -> None:
    ok = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "--drain-timeout" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "server", "--max-queue", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "max_queue" in bad.stderr


def test_every_engine_config_field_is_a_flag_and_a_variable(monkeypatch) -> None:
    """The serve flags and GLMSERVE_* variables are derived from EngineConfig, so none can be missing."""
    from dataclasses import fields

    from model import EngineConfig

    flags = {a for action in build_parser()._actions for a in action.option_strings}
    for f in fields(EngineConfig):
        assert "--" + f.name.replace("_", "-") in flags, f.name
    monkeypatch.setenv("GLMSERVE_BLOCK_SIZE", "32")
    s = settings_from(["--no-enable-prefix-caching", "--speculative-tokens", "4", "--kv-cache-fraction", "0.25"])
    ec = s.engine_config()
    assert (ec.block_size, ec.enable_prefix_caching, ec.num_speculative_tokens, ec.kv_cache_fraction) == (32, False, 4, 0.25)


def test_engine_config_refusals_are_settings_errors() -> None:
    with pytest.raises(ValidationError, match="block_size"):
        Settings(block_size=12)
    with pytest.raises(ValidationError, match="max_model_len"):
        Settings(max_model_len=8)


def test_size_flags_take_units() -> None:
    assert settings_from(["--kv-cache-memory", "128MiB"]).kv_cache_memory == 128 * 1024 ** 2
