"""Shared test helpers: tiny random checkpoints and a live glmserve server in a subprocess."""
