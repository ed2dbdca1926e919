"""Attention over a KV cache (flash-attn's ``flash_attn_with_kvcache``): decode and chunked
prefill, contiguous or paged cache, split-KV. Public API in api.py, the PyTorch specification in
reference.py, launchers in launch.py, @triton.jit code in kernels/."""
