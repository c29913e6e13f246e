"""Networks and their checkpoint weight names."""
from model.models.registry import build_model, weight_map_for

__all__ = ["build_model", "weight_map_for"]
