"""Thin HTTP handlers; the logic lives in server/serving."""
