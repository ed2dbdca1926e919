"""@triton.jit code for KV-cache attention; imports triton."""
