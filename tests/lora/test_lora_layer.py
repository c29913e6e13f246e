"""The batched LoRA product (model/lora/layer.py) against a per-row reference: every row gets
base(x) + x A^T B^T of its own adapter (or nothing), whatever the step's row layout: adapters in order
with equal row counts (added in place), unequal counts (padded), base rows between, unsorted rows,
adapters of different ranks, the oneDNN-packed and the plain path."""
from __future__ import annotations

import pytest
import torch

from model.lora import LoRAManager

LAYOUTS = {  # (lora position or 0 for the base, rows) per sequence, in row order
    "in order, equal counts": [(1, 3), (2, 3), (3, 3)],
    "unequal counts": [(1, 5), (2, 1), (3, 2)],
    "base rows between": [(0, 2), (2, 4), (0, 1), (1, 1), (3, 3)],
    "unsorted, split runs": [(3, 1), (1, 2), (3, 2), (2, 1), (1, 1)],
    "one adapter only": [(2, 4)],
}


@pytest.fixture(scope="module")
def managers(tiny_llama_dir, llama_adapters) -> dict[bool, LoRAManager]:
    """pack -> a manager over its own copy of the tiny base with the three adapters (ranks 4, 8, 2)."""
    from model.loader import load_model

    out = {}
    for pack in (True, False):
        out[pack] = LoRAManager(load_model(tiny_llama_dir).model.eval(), max_loras=3, max_lora_rank=64, pack=pack)
        for name in sorted(llama_adapters):
            out[pack].load(name, llama_adapters[name][0])
    return out


@pytest.mark.parametrize("pack", [True, False], ids=["packed", "plain"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_row_gets_its_own_adapter(managers, layout, pack):
    manager = managers[pack]
    by_position = {i: a.lora_id for i, a in enumerate(sorted(manager.adapters.values(), key=lambda a: a.name), 1)}
    spans = [(by_position.get(p, 0), n) for p, n in LAYOUTS[layout]]
    owners = [lora_id for lora_id, n in spans for _ in range(n)]
    layer = manager.model.layers[1]
    g = torch.Generator().manual_seed(0)
    for projection, key in ((layer.attn.qkv_proj, "attn.qkv_proj"), (layer.mlp.down_proj, "mlp.down_proj")):
        x = torch.randn(len(owners), projection.base.in_features, generator=g)
        with torch.no_grad():
            manager.prepare_step(spans)
            got = projection(x)
            want = projection.base(x)
            for row, lora_id in enumerate(owners):
                if lora_id:
                    a, b = manager.by_id[lora_id].weights.weights[(1, key)]
                    want[row] += x[row] @ a.t() @ b.t()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    manager.prepare_step([(0, 4)])  # a base-only step adds nothing
    x = torch.randn(4, layer.mlp.down_proj.base.in_features, generator=g)
    with torch.no_grad():
        assert torch.equal(layer.mlp.down_proj(x), layer.mlp.down_proj.base(x))
