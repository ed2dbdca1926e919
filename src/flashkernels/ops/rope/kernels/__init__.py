"""@triton.jit code only."""
