"""Clients that speak HTTP only: terminal chat, load generator, task commands, eval harness."""
