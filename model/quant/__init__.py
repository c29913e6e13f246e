"""Weight-only quantization: int8 per output channel and int4 group-wise, served through the matmul
kernels PyTorch ships (`torch.ops.aten._weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu` and the CUDA
`_weight_int4pack_mm`). Activations stay bf16 inside the kernel call.

The network code stays plain PyTorch: `quantize_model` swaps nn.Linear / nn.Embedding modules for the ones
here after loading (the model runner calls it, as it does the oneDNN packing), and the GGUF loader builds
the same modules straight from a file's Q4_0 / Q4_1 / Q8_0 blocks. A quantizing load (quantize.py
QuantizingLoad) quantizes each weight as it is read; an int4 lm_head is quantized last, its per-group
search weighted by the input statistics of a short calibration pass (calibration.py, over
data/calibration). Int8Linear / Int4Linear pass a gradient to their input, so LoRA trains over them.
"""
from model.quant.modules import Int4Embedding, Int4Linear, Int8Embedding, Int8Linear, QUANT_MODULES
from model.quant.quantize import QuantSpec, describe_quantization, quantize_model, weight_bytes

__all__ = ["Int4Embedding", "Int4Linear", "Int8Embedding", "Int8Linear", "QUANT_MODULES", "QuantSpec",
           "describe_quantization", "quantize_model", "weight_bytes"]
