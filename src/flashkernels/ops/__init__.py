"""Operators: one sub-package per op (api, reference, kernels, launch, autograd)."""
