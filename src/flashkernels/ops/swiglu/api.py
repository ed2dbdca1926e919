"""Public gated activations (SwiGLU, GeGLU): validation, docstrings and dispatch."""
from __future__ import annotations

from ... import _backend
from ..._interpreter import require_kernels_can_run
from ..._validate import KERNEL_DTYPES, require_float_dtype, require_like, require_tensor
from .reference import APPROXIMATIONS, geglu_reference, swiglu_reference


def _check(gate, up):
    require_tensor(gate, "gate")
    require_float_dtype(gate, "gate")
    require_like(up, "up", gate, "gate")


def _triton(gate, up, act):
    from .autograd import gated_activation  # imports triton: only once the Triton backend is chosen
    from .launch import KERNELS_INTERPRETED

    require_kernels_can_run(gate.device, KERNELS_INTERPRETED)
    # The kernels index flat memory: a non-contiguous input (a transposed or sliced view, e.g.
    # the two halves of a fused gate_up projection) is copied once here; contiguous ones are not.
    return gated_activation(gate.contiguous(), up.contiguous(), act)


def swiglu(gate, up, *, backend=None):
    """SwiGLU: ``out = silu(gate) * up = gate * sigmoid(gate) * up``, elementwise.

    Args:
        gate, up: tensors of one shape (any), dtype and device; float16, bfloat16 or float32 on
            the Triton kernels, float64 on the reference path. Non-contiguous inputs are copied
            to contiguous memory first (the kernels index flat memory).
        backend: "auto" (default), "triton" or "reference"; default from ``$FLASHKERNELS_BACKEND``.
    Returns:
        out, shaped and typed like gate (contiguous). silu(gate) is rounded to the input dtype
        before the product, as ``act_fn(gate_proj(x)) * up_proj(x)`` in Hugging Face's MLPs.
        Backward (fp32 arithmetic): dgate = dout * up * silu'(gate), dup = dout * silu(gate).
    """
    _check(gate, up)
    choice = _backend.resolve(gate.device, backend, dtype_ok=gate.dtype in KERNEL_DTYPES, dtype=gate.dtype)
    if choice.backend == "reference":
        return swiglu_reference(gate, up)
    return _triton(gate, up, 0)


def geglu(gate, up, approximate="tanh", *, backend=None):
    """GeGLU: ``out = gelu(gate, approximate) * up``, elementwise (Gemma's MLP).

    Args:
        gate, up: as :func:`swiglu`.
        approximate: "tanh" (default; ``0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g³)))``, Gemma's
            gelu_pytorch_tanh) or "none" (``0.5 g (1 + erf(g / sqrt 2))``), as
            ``torch.nn.functional.gelu``.
        backend: "auto" (default), "triton" or "reference".
    Returns:
        out, shaped and typed like gate; gelu(gate) rounded to the input dtype before the product.
    """
    _check(gate, up)
    if not isinstance(approximate, str):
        raise TypeError(f"approximate: expected a str, got {type(approximate).__name__}")
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"approximate: expected 'tanh' or 'none', got {approximate!r}")
    choice = _backend.resolve(gate.device, backend, dtype_ok=gate.dtype in KERNEL_DTYPES, dtype=gate.dtype)
    if choice.backend == "reference":
        return geglu_reference(gate, up, approximate)
    return _triton(gate, up, 1 if approximate == "tanh" else 2)
