"""Gated activations in plain PyTorch: the specification, and the path used on CPUs.

    swiglu(gate, up) = silu(gate) * up                 (Llama, Mistral, Qwen MLPs)
    geglu(gate, up)  = gelu(gate, approximate) * up    (Gemma's MLP; approximate "tanh" or "none")

As in the Hugging Face MLPs (``act_fn(gate_proj(x)) * up_proj(x)``), the activation is
rounded to the input dtype before the product, and the product is rounded again.

This module imports nothing from the kernels: it is what they are tested against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

APPROXIMATIONS = ("tanh", "none")


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def geglu_reference(gate: torch.Tensor, up: torch.Tensor, approximate: str = "tanh") -> torch.Tensor:
    return F.gelu(gate, approximate=approximate) * up
