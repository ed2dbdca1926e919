"""Backend resolution: which implementation runs a call, and why.

Three backends:

* ``"triton"``    -- the Triton kernels. On a CUDA GPU they compile and run natively; on CPU
  tensors they run only through Triton's interpreter (``TRITON_INTERPRET=1``), which is how CI
  tests the real kernels without a GPU.
* ``"reference"`` -- the plain PyTorch path (the specification). Runs anywhere.
* ``"auto"``      -- the default: ``triton`` for CUDA tensors when Triton imports and the GPU is
  supported, ``reference`` otherwise. With ``TRITON_INTERPRET=1`` set, ``auto`` still picks
  ``reference`` for CPU tensors: the interpreter is a test tool, far too slow for real work.

The choice comes from the ``backend=`` argument of a call, else from the environment variable
``FLASHKERNELS_BACKEND``, else ``"auto"``. An explicit ``"triton"`` request never falls back:
when Triton cannot run the call, :func:`resolve` raises and says why.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

BACKENDS = ("auto", "triton", "reference")
ENV_VAR = "FLASHKERNELS_BACKEND"

# Triton's tl.dot on sm < 80 lacks bf16 and the kernels are tuned for Ampere and newer.
MIN_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class Choice:
    """The resolved backend for one call and a one-line reason a person can read."""

    backend: str  # "triton" or "reference"
    reason: str


def interpreter_enabled() -> bool:
    """True when Triton's interpreter is switched on (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=None)
def triton_import_error() -> str | None:
    """None when ``import triton`` works, else the error text (cached: imports are slow)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising anything
        return f"{type(exc).__name__}: {exc}"
    return None


def triton_version() -> str | None:
    if triton_import_error() is not None:
        return None
    import triton

    return triton.__version__


def requested_backend(backend: str | None) -> str:
    """The backend asked for: the argument, else ``$FLASHKERNELS_BACKEND``, else ``"auto"``."""
    source = "backend"
    if backend is None:
        backend = os.environ.get(ENV_VAR, "").strip() or "auto"
        source = ENV_VAR
    if not isinstance(backend, str) or backend.lower() not in BACKENDS:
        raise ValueError(
            f"{source}: expected one of {', '.join(map(repr, BACKENDS))}, got {backend!r}"
        )
    return backend.lower()


@functools.lru_cache(maxsize=None)
def _capability(device_index: int) -> tuple[int, int]:
    """(major, minor) of a CUDA device, asked once (torch's lookup cost ~5 us of host time a
    call on the H100 machine, and every op asks; scripts/exp_host_attention.py)."""
    return torch.cuda.get_device_capability(device_index)


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on ``device``, or None when they can."""
    err = triton_import_error()
    if err is not None:
        return f"triton does not import ({err}); install it with `pip install triton`"
    if device.type == "cuda":
        if interpreter_enabled():
            return "TRITON_INTERPRET=1 is set, and the interpreter runs CPU tensors only"
        cap = _capability(device.index if device.index is not None else torch.cuda.current_device())
        if cap < MIN_CAPABILITY:
            return (
                f"GPU compute capability {cap[0]}.{cap[1]} is below the supported "
                f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} (Ampere)"
            )
        return None
    if device.type == "cpu":
        if interpreter_enabled():
            return None
        return (
            "tensors are on the CPU; Triton kernels need a CUDA GPU, or TRITON_INTERPRET=1 "
            "to run them through Triton's (slow) interpreter"
        )
    return f"device type {device.type!r} is not supported by the Triton kernels"


def resolve(device: torch.device, backend: str | None = None, *, dtype_ok: bool = True,
            dtype: torch.dtype | None = None) -> Choice:
    """Resolve the backend for a call on ``device``.

    ``dtype_ok=False`` says the kernels do not handle ``dtype`` (float64, say): ``auto`` then
    takes the reference path and ``triton`` raises.
    """
    req = requested_backend(backend)
    if req == "reference":
        return Choice("reference", "requested")
    why_not = triton_unavailable_reason(device)
    if why_not is None and not dtype_ok:
        why_not = f"the Triton kernels do not support dtype {dtype}; they take float16, bfloat16 and float32"
    if req == "triton":
        if why_not is not None:
            raise RuntimeError(f"backend='triton' was requested but cannot run: {why_not}")
        return Choice("triton", "requested")
    # auto
    if device.type == "cuda" and why_not is None:
        return Choice("triton", "CUDA device with Triton")
    if device.type == "cpu":
        return Choice("reference", "CPU tensors (the PyTorch path)")
    return Choice("reference", why_not or "no Triton kernel for this device")


def device_summary() -> dict:
    """What was detected on this machine, for ``flashkernels info``."""
    info: dict = {
        "torch": torch.__version__,
        "triton": triton_version() or f"unavailable ({triton_import_error()})",
        "cuda_available": torch.cuda.is_available(),
        "interpreter": interpreter_enabled(),
        "env_backend": os.environ.get(ENV_VAR) or None,
        "devices": [],
    }
    if torch.cuda.is_available():
        info["cuda_runtime"] = torch.version.cuda
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["devices"].append(
                {
                    "index": i,
                    "name": p.name,
                    "capability": f"{p.major}.{p.minor}",
                    "memory_gib": round(p.total_memory / 2**30, 1),
                    "multiprocessors": p.multi_processor_count,
                }
            )
    return info
