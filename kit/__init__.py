"""Thin recipes around Unsloth."""
