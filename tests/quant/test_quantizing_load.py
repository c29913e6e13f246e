"""`--quantization int8|int4` on a float checkpoint quantizes each projection as it is read (no float copy of
the whole model): the result equals loading the float model and quantizing it afterwards, tensor for
tensor, for a tied-embedding Llama (q/k/v and gate/up fused from separate tensors), a GLM-4 with q/k/v
biases, and a ChatGLM3 checkpoint (fused query_key_value, shards split across files)."""
from __future__ import annotations

import pytest
import torch

from model import EngineConfig
from model.loader import load_model
from model.quant import QuantSpec, quantize_model
from model.quant.calibration import calibration_windows, random_windows
from tests.helpers import glm_replicas


@pytest.fixture(scope="module")
def checkpoints(tiny_llama_dir: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("quantizing-load")
    return {"llama": tiny_llama_dir,
            "glm4": glm_replicas.build_glm4_chat_hf_replica(root / "glm-4-9b-chat-hf"),
            "chatglm3": glm_replicas.build_chatglm3_replica(root / "chatglm3-6b")}


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def _quantized_after_loading(model_dir: str, spec: QuantSpec) -> torch.nn.Module:
    """The float load, then quantize_model with the calibration windows the quantizing load reads itself."""
    loaded = load_model(model_dir)
    quantize_model(loaded.model, spec, calibration_windows(model_dir, loaded.config.vocab_size))
    return loaded.model


@pytest.mark.parametrize("method", ["int8", "int4"])
@pytest.mark.parametrize("which", ["llama", "glm4", "chatglm3"])
def test_quantized_while_loading_equals_quantized_after_loading(checkpoints: dict[str, str], which: str,
                                                                 method: str) -> None:
    spec = QuantSpec(method, 32)
    after = _quantized_after_loading(checkpoints[which], spec)
    streamed = load_model(checkpoints[which], engine_config=EngineConfig(quantization=method)).model
    assert not any(t.is_meta for t in _tensors(streamed).values())
    quantize_model(streamed, spec)  # what the model runner does next: the embedding and lm_head
    expected, got = _tensors(after), _tensors(streamed)
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
    assert [type(m).__name__ for m in streamed.modules()] == [type(m).__name__ for m in after.modules()]
    ids = torch.tensor([[1, 5, 9, 200, 7]])
    with torch.inference_mode():
        logits, reference = streamed.compute_logits(streamed(ids)), after.compute_logits(after(ids))
    assert logits.dtype == reference.dtype == torch.float32 and torch.equal(logits, reference)


def test_a_float_load_builds_in_its_dtype_and_keeps_ties(tiny_llama_dir: str) -> None:
    loaded = load_model(tiny_llama_dir, dtype=torch.bfloat16).model
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert loaded.lm_head.weight is loaded.embed_tokens.weight
    reference = load_model(tiny_llama_dir).model.to(torch.bfloat16)
    for (name, p), (_, q) in zip(loaded.named_parameters(), reference.named_parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("method", ["int8", "int4"])
@pytest.mark.parametrize("which", ["llama", "glm4"])
def test_tables_read_in_row_slices_equal_quantized_after_loading(checkpoints: dict[str, str], which: str,
                                                                 method: str, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A tensor above the slice threshold (here 64 KiB, so the embedding and an untied lm_head are) is
    quantized from row slices of the file, in chunks of 128 rows: the result is the same tensor for tensor."""
    import model.loader
    import model.quant.quantize

    monkeypatch.setattr(model.loader, "SLICE_ABOVE_BYTES", 64 << 10)
    monkeypatch.setattr(model.quant.quantize, "CHUNK_ELEMENTS", 128 * 64)  # 64-wide rows: 128 a chunk
    spec = QuantSpec(method, 32)
    after = _quantized_after_loading(checkpoints[which], spec)
    with caplog.at_level("INFO", logger="glmserve.loader"):
        streamed = load_model(checkpoints[which], engine_config=EngineConfig(quantization=method)).model
    # the GLM's embedding and its lm_head; the Llama's tied table, except at int4, where the calibration
    # pass reads it as the float embedding before it is quantized
    sliced = 2 if which == "glm4" else 1 if method == "int8" else 0
    assert any(f"({sliced} read in row slices;" in r.getMessage() for r in caplog.records), caplog.text
    expected, got = _tensors(after), _tensors(streamed)
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
    ids = torch.tensor([[1, 5, 9, 200, 7]])
    with torch.inference_mode():
        assert torch.equal(streamed.compute_logits(streamed(ids)), after.compute_logits(after(ids)))


@pytest.mark.parametrize("which", ["llama", "glm4"])
def test_the_head_table_is_quantized_last_whatever_the_checkpoint_order(checkpoints: dict[str, str], which: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The int4 lm_head (and a table tied to it) is quantized after the calibration pass through the whole
    model: when a checkpoint yields the final norm last (a .bin file's order), the result is the same."""
    import model.loader

    original = model.loader.iter_checkpoint_tensors

    def norm_last(*args, **kwargs):
        items = sorted(original(*args, **kwargs), key=lambda item: item[0] == "model.norm.weight")
        assert items[-1][0] == "model.norm.weight"
        return iter(items)

    spec = QuantSpec("int4", 32)
    after = _quantized_after_loading(checkpoints[which], spec)
    monkeypatch.setattr(model.loader, "iter_checkpoint_tensors", norm_last)
    streamed = load_model(checkpoints[which], engine_config=EngineConfig(quantization="int4")).model
    expected, got = _tensors(after), _tensors(streamed)
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


@pytest.mark.parametrize("which", ["llama", "glm4"])
def test_calibration_reads_the_committed_text_and_steers_the_head_table(checkpoints: dict[str, str],
                                                                        which: str) -> None:
    """The quantizing load's calibration windows are the committed text by the checkpoint's tokenizer (not
    the random stand-in), and the table they give differs from the stand-in's: the pass is not a no-op."""
    loaded = load_model(checkpoints[which])
    vocab = loaded.config.vocab_size
    windows = calibration_windows(checkpoints[which], vocab)
    assert windows != random_windows(vocab) and all(1 < len(w) <= 128 for w in windows)
    assert sum(len(w) for w in windows) > 500
    from_text = _quantized_after_loading(checkpoints[which], QuantSpec("int4", 32))
    quantize_model(loaded.model, QuantSpec("int4", 32), random_windows(vocab))
    head = "embed_tokens" if which == "llama" else "lm_head"
    a, b = dict(from_text.named_buffers()), dict(loaded.model.named_buffers())
    assert any(not torch.equal(a[n], b[n]) for n in a if n.startswith(head)), "calibration changed nothing"
    assert all(torch.equal(a[n], b[n]) for n in a if not n.startswith(("embed_tokens", "lm_head"))), \
        "only the head table depends on the calibration"
