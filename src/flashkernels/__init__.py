"""flashkernels: flash attention and fused LLM kernels in Triton, with an exact PyTorch path.

Importing this package does not import Triton; the kernels load on first use.
"""
from .ops.attention.api import flash_attn_func, scaled_dot_product_attention

__version__ = "0.1.0"
__all__ = ["scaled_dot_product_attention", "flash_attn_func", "__version__"]
