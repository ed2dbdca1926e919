"""@triton.jit code for attention; imports triton."""
