"""Integrations of flashkernels into other libraries.

* :mod:`flashkernels.integrations.transformers`: ``apply(model)`` puts the flashkernels ops into a
  Llama-family Hugging Face model (needs the ``hf`` extra: ``pip install "flashkernels[hf]"``).

The submodules import their library only when imported themselves; importing this package
imports nothing optional.
"""
