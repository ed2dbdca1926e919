"""Kernel launches without Triton's per-call binder, for eager calls.

``kernel[grid](*args, **constexprs)`` (``JITFunction.run``) pays host time on every call: it
binds and specialises every argument (ints equal to 1 or divisible by 16, pointer alignment,
tensor descriptors' block shapes), hashes a cache key, compares the kernel's global constants
and builds each host TMA descriptor's checks before calling the compiled kernel's C launcher.
On the H100 machine (scripts/exp_host_attention.py, session 10) the Gluon attention forward's
launch took 45.7 us of host time through ``kernel[grid]`` and 13.5 us through its compiled
kernel's launcher with the same arguments; the attention, norm and MLP calls of a Llama layer
step are host-bound there (scripts/profile_layer.py --gaps).

:func:`cached_launch` keeps, per kernel, the compiled kernel of each specialisation it has
launched, under a key computed here from the arguments: for every int its class (1, a multiple
of 16, other) and width (int32, int64, uint64), for every tensor its dtype and 16-byte
alignment, for every TMA descriptor its dtype, block shape, layout and base alignment, the type
of floats, the value of bools and None, the constexpr keywords and launch options by value, and
the current device. That tells apart at least what Triton's specialisation does, so a hit is the
kernel Triton's own lookup would return. A miss launches through ``kernel[grid]`` (compiling if
needed) and stores what it returned. ``$FLASHKERNELS_LAUNCH_CACHE=check`` (the GPU tests) also
asks Triton for each hit's kernel (``kernel.warmup``, which compiles but does not launch) and
raises if it is not the cached one: a key that failed to tell two specialisations apart. Every
launch goes through ``kernel[grid]`` instead when
wrap_triton is on for a traceable launch (torch.compile tracing, custom-op dispatch: see
flashkernels._eager; then through ``wrap_triton``), when
Triton's launch hooks are set (profilers), under Triton's interpreter, with a Triton outside the
3.6 series whose launcher this calls, with an argument of another type, or with
``$FLASHKERNELS_LAUNCH_CACHE=0``.

TMA descriptors: pass :class:`TmaDesc` (the fields of Gluon's host ``TensorDescriptor``). A miss
builds the real descriptor from it (with its checks); a hit hands it to the launcher as is,
which reads only base, shape, strides and padding.
"""
from __future__ import annotations

import inspect
import os
from typing import Any, NamedTuple

import torch

from ._eager import launchable

ENV_VAR = "FLASHKERNELS_LAUNCH_CACHE"
MAX_ENTRIES = 512  # per kernel; past it the cache starts over (specialisations, not calls)


class TmaDesc(NamedTuple):
    """A host TMA descriptor's fields: ``base`` tensor, its 2-D (or N-D) ``shape`` and
    ``strides`` (elements, last 1), the ``block_shape`` one load moves, the shared ``layout``."""
    base: torch.Tensor
    shape: list
    strides: list
    block_shape: list
    layout: Any
    padding: str = "zero"


def _triton_ok() -> bool:
    global _JIT
    try:
        import triton
        from triton import knobs  # noqa: F401
        from triton.runtime.jit import JITFunction
    except Exception:  # pragma: no cover - depends on the install
        return False
    _JIT = JITFunction
    return triton.__version__.startswith("3.6.") and hasattr(torch._C, "_cuda_getCurrentRawStream")


_OK = None  # decided at the first launch (imports triton)
_CHECK = False  # $FLASHKERNELS_LAUNCH_CACHE=check, read by enabled()
_JIT = None  # triton's JITFunction (Gluon's is a subclass; the interpreter's is not)
_INT32 = (-2**31, 2**31)
_UINT = 2**63


def _spec(a):
    """The part of argument ``a`` that Triton's specialisation depends on (see the module
    docstring); raises TypeError for a type this key does not cover. A bool is keyed apart from
    the int classes (True == 1 would otherwise match an int's class 1)."""
    t = type(a)
    if t is int:
        width = 0 if _INT32[0] <= a < _INT32[1] else (2 if a >= _UINT else 1)
        return width * 3 + (0 if a == 1 else 1 if a % 16 == 0 else 2)
    if t is float:
        return float
    if t is bool or a is None:
        return (bool, a)
    if t is TmaDesc:
        return (TmaDesc, a.base.dtype, tuple(a.block_shape), a.layout, a.base.data_ptr() % 16 == 0, a.padding)
    if isinstance(a, torch.Tensor):
        return (a.dtype, a.data_ptr() % 16 == 0)
    raise TypeError(type(a).__name__)


class _Entry(NamedTuple):
    compiled: Any
    tail: tuple  # the parameters after the positional arguments: (True, name) from the keywords, (False, value)


_UNCACHEABLE = object()


def _params(kernel):
    """(names of ``kernel``'s runtime parameters, its KernelParams), cached on the kernel."""
    got = kernel.__dict__.get("_flashkernels_params")
    if got is None:
        got = (frozenset(p.name for p in kernel.params if not p.is_constexpr), kernel.params)
        kernel.__dict__["_flashkernels_params"] = got
    return got


def _tail(params, n_args: int, kwargs: dict):
    """How to fill the parameters after the first ``n_args`` on a hit: a tuple of (True, name)
    (a runtime parameter given by keyword) and (False, value) (a constexpr, from ``kwargs`` or
    its default: part of the key either way; a runtime parameter left at its default). None when
    the call does not fit (a constexpr among the positional arguments, a runtime parameter with
    neither a keyword nor a default)."""
    if any(p.is_constexpr for p in params[:n_args]):
        return None
    tail = []
    for p in params[n_args:]:
        if p.name in kwargs:
            tail.append((not p.is_constexpr, p.name if not p.is_constexpr else kwargs[p.name]))
        elif p.default is inspect.Parameter.empty:
            return None
        else:
            tail.append((False, p.default))
    return tuple(tail)


def real_desc(a):
    """``a`` as ``kernel[grid]`` takes it: a TmaDesc built into Triton's host TensorDescriptor
    (with its checks), anything else as is."""
    if type(a) is TmaDesc:
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

        return TensorDescriptor(*a)
    return a


def real_args(args, kwargs):
    """``args`` and ``kwargs`` with each TmaDesc built into Triton's host TensorDescriptor (with
    its checks): what ``kernel[grid]`` takes."""
    return tuple(map(real_desc, args)), {k: real_desc(v) for k, v in kwargs.items()}


def enabled() -> bool:
    """Whether :func:`cached_launch` may take its fast path in this process right now (the
    checks that do not depend on the call)."""
    global _OK
    if _OK is None:
        _OK = _triton_ok()
    global _CHECK
    mode = os.environ.get(ENV_VAR, "").strip().lower()
    if not _OK or mode == "0":
        return False
    _CHECK = mode == "check"
    from triton import knobs

    # (3.6's hooks are HookChains, empty unless a profiler added a hook)
    return not any(h is not None and getattr(h, "calls", True)
                   for h in (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook))


def _slow(kernel, grid, args, kwargs, wrap: bool = False):
    args, kwargs = real_args(args, kwargs)
    return (launchable(kernel) if wrap else kernel)[grid](*args, **kwargs)


def cached_launch(kernel, grid: tuple, *args, fk_traceable: bool = True, **kwargs):
    """``kernel[grid](*args, **kwargs)``, with repeat specialisations launched straight through
    the compiled kernel's launcher. ``grid`` a tuple of 1-3 ints; ``args`` the first runtime
    parameters, in order; ``kwargs`` constexprs, launch options (num_warps, maxnreg...) and any
    later runtime parameters. TMA descriptors as :class:`TmaDesc`. Returns what ``kernel[grid]``
    returns (the compiled kernel). ``fk_traceable``: the launch goes through
    :func:`flashkernels._eager.launchable` (wrap_triton, for torch.compile) when wrap_triton is
    on; False for kernels never traced (Gluon's: traced calls reach them through opaque ops)."""
    from torch._library.triton import is_wrap_triton_enabled

    if (fk_traceable and is_wrap_triton_enabled()) or not enabled() or not isinstance(kernel, _JIT):
        return _slow(kernel, grid, args, kwargs, wrap=fk_traceable)
    device = torch.cuda.current_device()
    runtime, params = _params(kernel)
    cache = kernel.__dict__.setdefault("_flashkernels_launches", {})
    try:
        key = _key(device, runtime, args, kwargs)
        entry = cache.get(key)
    except TypeError:  # an argument the key does not cover (or a constexpr that does not hash)
        return _slow(kernel, grid, args, kwargs)
    if entry is None:
        compiled = _slow(kernel, grid, args, kwargs)
        if hasattr(compiled, "result"):
            compiled = compiled.result()
        tail = _tail(params, len(args), kwargs)
        if len(cache) >= MAX_ENTRIES:
            cache.clear()
        cache[key] = _UNCACHEABLE if tail is None or compiled is None else _Entry(compiled, tail)
        return compiled
    if entry is _UNCACHEABLE:
        return _slow(kernel, grid, args, kwargs)
    return launch_entry(kernel, entry, grid, args, kwargs, device)


def _key(device, runtime, args, kwargs):
    """:func:`cached_launch`'s key of a call (raises TypeError for an argument it does not cover)."""
    return (device, tuple(map(_spec, args)),
            tuple((k, _spec(v)) if k in runtime else (k, v) for k, v in kwargs.items()))


def cached_entry(kernel, args, kwargs):
    """The entry :func:`cached_launch` keeps for a call of ``kernel`` with these arguments (after a
    launch of them: what a later call with the same specialisation hits), or None (none kept, a call
    it cannot cache, or the fast path off)."""
    if not enabled() or not isinstance(kernel, _JIT):
        return None
    try:
        entry = kernel.__dict__.get("_flashkernels_launches", {}).get(
            _key(torch.cuda.current_device(), _params(kernel)[0], args, kwargs))
    except TypeError:
        return None
    return entry if isinstance(entry, _Entry) else None


def launch_entry(kernel, entry, grid, args, kwargs, device=None):
    """Launch ``entry`` (a :func:`cached_entry` of ``kernel``) on ``args`` and ``kwargs``, which must
    have the specialisation it was kept for: straight through its compiled kernel's launcher; with
    ``$FLASHKERNELS_LAUNCH_CACHE=check`` after asking Triton for the kernel of these arguments
    (raises if it is another). Returns the compiled kernel."""
    if device is None:
        device = torch.cuda.current_device()
    compiled = entry.compiled
    if _CHECK:
        rargs, rkwargs = real_args(args, kwargs)
        own = kernel.warmup(*rargs, grid=grid, **rkwargs)
        if hasattr(own, "result"):
            own = own.result()
        if own is not compiled:
            raise AssertionError(f"flashkernels launch cache: a kept entry of {kernel} maps these arguments to "
                                 "another specialisation than Triton's own lookup")
    g = (tuple(grid) + (1, 1))[:3]
    compiled.run(g[0], g[1], g[2], torch._C._cuda_getCurrentRawStream(device), compiled.function,
                 compiled.packed_metadata, None, None, None, *args,
                 *[kwargs[v] if by_name else v for by_name, v in entry.tail])
    return compiled
