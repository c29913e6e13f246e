"""The model worker: continuous batching over a paged KV cache."""
