"""Rotary position embedding (RoPE): public API in api.py, the specification in reference.py."""
