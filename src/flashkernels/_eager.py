"""Eager calls of the custom ops without the dispatcher's per-call host time.

Every op is a ``torch.library`` custom op (``triton_op``) with autograd registered through
``torch.library.register_autograd``: that is what torch.compile traces and ``opcheck`` checks.
Called eagerly, the same path costs host time on every call: torch.library's autograd wrapper
rebuilds the schema's argument list (``fill_defaults``), the dispatcher redispatches, and
Dynamo's disable wrapper runs, about 0.2-0.4 ms for attention's 18 arguments on a 2-core CPU,
more than a small kernel takes on the GPU. :func:`eager_call` returns a function that, outside
torch.compile, calls the op's Python implementation directly: through a
``torch.autograd.Function`` built from the same setup_context and backward when a gradient is
needed, plainly otherwise. Under torch.compile it calls the custom op.

The launchers call their kernels through ``flashkernels._launch.cached_launch``, which goes
through ``torch.library.wrap_triton`` (what torch.compile traces) where wrap_triton is on. Called outside a custom op, ``wrap_triton`` routes every launch through the
``triton_kernel_wrapper_mutation`` higher-order op, which cost ~0.9 ms of host time a launch on
the H100 machine (decode read 0.49 TB/s instead of 2.7, 2026-11-25); the custom op's own eager
path turns that off with ``set_wrap_triton_enabled(False)``, and :func:`direct` does the same
for the calls made here.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch._library.triton import is_wrap_triton_enabled, set_wrap_triton_enabled
from torch.library import wrap_triton


def launchable(kernel):
    """``wrap_triton(kernel)`` where wrap_triton is on (torch.compile tracing, a custom op's
    dispatch), else the kernel itself, launched straight (the eager calls, see :func:`direct`).
    torch 2.13's wrap_triton returns the kernel itself there too; 2.11's builds its wrapper
    anyway, 7-12 µs a launch on the H100 machine (scripts/exp_launch_overhead.py, session 9)."""
    return wrap_triton(kernel) if is_wrap_triton_enabled() else kernel


def direct(fn: Callable) -> Callable:
    """``fn`` with ``wrap_triton`` off: its kernel launches go straight to Triton, as inside a
    custom op's eager implementation, instead of through the higher-order op (see above)."""
    def run(*args, **kwargs):
        with set_wrap_triton_enabled(False):
            return fn(*args, **kwargs)

    run.__wrapped__ = fn
    return run


def eager_call(op: Callable, impl: Callable, setup_context: Optional[Callable] = None,
               backward: Optional[Callable] = None, name: str = "EagerOp") -> Callable:
    """``call(*args)``: ``op(*args)`` under torch.compile; else ``impl(*args)``, wrapped in an
    autograd.Function (``setup_context(ctx, inputs, output)``, ``backward(ctx, *grads)``, the
    functions registered for the op) when grad mode is on and a tensor argument requires grad."""
    fn = None
    impl, backward = direct(impl), (direct(backward) if backward is not None else None)
    if backward is not None:
        def forward(ctx, *inputs):
            output = impl(*inputs)
            setup_context(ctx, inputs, output)
            return output

        def bwd(ctx, *grads):
            return backward(ctx, *grads)

        fn = type(name, (torch.autograd.Function,), {"forward": staticmethod(forward),
                                                      "backward": staticmethod(bwd)})

    def call(*args):
        if torch.compiler.is_compiling():
            return op(*args)
        if fn is not None and torch.is_grad_enabled() and any(
                isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return fn.apply(*args)
        return impl(*args)

    return call
