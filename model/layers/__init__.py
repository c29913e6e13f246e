"""Building blocks of the GLM/Llama-family network."""
