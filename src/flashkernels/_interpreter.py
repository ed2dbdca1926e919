"""Compatibility of Triton's CPU interpreter (TRITON_INTERPRET=1) with the installed NumPy.

Triton 3.6's interpreter turns a scalar tensor into a Python int with ``int(ndarray)``; NumPy
2.4 raises TypeError for 1-element arrays of ndim 1, so a kernel loop ``range(a, b)`` with a
computed bound fails (triton-lang/triton#9171, fixed upstream by squeezing the array). The
kernels' launchers call :func:`fix_numpy_scalar_conversion` when the interpreter is on, so a user
of the interpreter gets working kernels whatever NumPy they have. CI pins numpy<2.4 as well.
"""
from __future__ import annotations

import warnings


def fix_numpy_scalar_conversion() -> None:
    """Patch the interpreter's scalar conversion the way upstream fixed it, when this NumPy
    refuses ``int()`` of a 1-element array; no effect otherwise (and idempotent)."""
    import numpy as np

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            int(np.array([1]))
        return  # this NumPy still converts: nothing to fix
    except TypeError:
        pass
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_flashkernels_fix", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    patched._flashkernels_fix = True
    interpreter._patch_lang_tensor = patched


def kernels_interpreted(kernel) -> bool:
    """True when ``kernel`` (an op's @triton.jit kernel) was decorated under TRITON_INTERPRET=1,
    so it runs on CPU tensors only; applies :func:`fix_numpy_scalar_conversion` then. Each
    launcher decides this once, at import, into a plain bool that torch.compile can read
    (``isinstance`` on a kernel object inside a traced function is a graph break). Triton reads
    the variable once, when ``triton.language`` is first imported."""
    import triton.language.standard as tl_standard
    from triton.runtime.interpreter import InterpretedFunction

    ours = isinstance(kernel, InterpretedFunction)
    if ours != isinstance(tl_standard.sum, InterpretedFunction):  # Triton's own @jit helpers
        raise RuntimeError(
            "TRITON_INTERPRET changed between the first import of triton and the import of the "
            "flashkernels kernels, so interpreted and compiled functions are mixed; set (or unset) "
            "it before anything imports triton")
    if ours:
        fix_numpy_scalar_conversion()
    return ours


def require_kernels_can_run(device, interpreted: bool) -> None:
    """RuntimeError unless kernels decorated ``interpreted`` (a launcher's KERNELS_INTERPRETED)
    can run on tensors of ``device``: interpreted ones on CPU tensors, compiled ones on CUDA."""
    if interpreted != (device.type == "cpu"):
        raise RuntimeError(
            f"backend='triton' cannot run on {device.type} tensors: Triton was imported "
            f"{'with' if interpreted else 'without'} TRITON_INTERPRET=1, and it reads the variable "
            "only once, at its first import; set TRITON_INTERPRET=1 before anything imports triton to run "
            "the kernels on CPU tensors, and leave it unset for CUDA tensors")
