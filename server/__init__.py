"""glmserve's HTTP front: an OpenAI-compatible API over the model worker."""
