"""Many LoRA adapters on one base model: the PEFT layout (peft_format.py), the serving projection that
adds each adapter's low-rank product to its rows of a mixed batch (layer.py), and the registry with
device residency (manager.py)."""
from model.lora.manager import Adapter, AdapterInUse, LoRAManager
from model.lora.peft_format import AdapterError, read_adapter, write_adapter

__all__ = ["Adapter", "AdapterError", "AdapterInUse", "LoRAManager", "read_adapter", "write_adapter"]
