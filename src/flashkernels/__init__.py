"""flashkernels: flash attention and fused LLM kernels in Triton, with an exact PyTorch path.

Importing this package does not import Triton; the kernels load on first use.
"""
from .ops.attention.api import flash_attn_func, flash_attn_varlen_func, scaled_dot_product_attention
from .ops.attention.memory import attention_memory
from .ops.kvcache.api import flash_attn_with_kvcache
from .ops.rms_norm.api import rms_norm
from .ops.rope.api import apply_rotary_emb, apply_rotary_pos_emb
from .ops.swiglu.api import geglu, swiglu

__version__ = "0.1.0"
__all__ = ["scaled_dot_product_attention", "flash_attn_func", "flash_attn_varlen_func", "flash_attn_with_kvcache",
           "rms_norm", "apply_rotary_emb",
           "apply_rotary_pos_emb", "swiglu", "geglu", "attention_memory",
           "__version__"]
