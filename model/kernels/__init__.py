"""Hand-written CPU kernels (C, compiled at first use; model/kernels/build.py says why and how)."""
