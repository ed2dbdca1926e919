"""Put the flashkernels ops into a Llama-family Hugging Face ``transformers`` model.

    import flashkernels.integrations.transformers as fk_hf
    model = fk_hf.apply(model)                      # in place; returns the model
    model = fk_hf.apply(model, backend="triton")    # pin the backend of every patched call

Supported: the model classes (``*ForCausalLM``, ``*Model``, ...) of Llama, Qwen2, Qwen3, Mistral
and Gemma (``config.model_type`` "llama", "qwen2", "qwen3", "mistral", "gemma"), on
transformers >= 5.24 (the ``hf`` extra). Anything else raises ``NotImplementedError`` naming the
model class.

What ``apply`` changes, precisely:

* **RMSNorm** -- every ``<Arch>RMSNorm`` module of the model (``LlamaRMSNorm``, ...,
  ``GemmaRMSNorm``; Qwen3's per-head ``q_norm``/``k_norm`` too) gets an instance-level
  ``forward`` calling :func:`flashkernels.rms_norm` with the module's own ``weight`` and eps
  (``variance_epsilon``, or ``eps`` for Gemma): ``casting_mode="llama"``, or
  ``casting_mode="gemma", offset=1.0`` for Gemma (whose weights store w - 1). Parameters and
  state dict are untouched. A weight whose dtype differs from the input's falls back to the
  module's original forward (Hugging Face's type promotion).
* **MLP** -- every ``<Arch>MLP`` gets an instance-level ``forward``
  ``down_proj(swiglu(gate_proj(x), up_proj(x)))`` (``hidden_act`` "silu"), or
  ``geglu(..., approximate="tanh")`` for "gelu_pytorch_tanh" (Gemma) and ``approximate="none"``
  for "gelu". The Linear layers are kept (their weights, biases, LoRA wrappers...).
* **Rotary** -- the module-level function ``apply_rotary_pos_emb`` of the model's modeling module
  (e.g. ``transformers.models.llama.modeling_llama.apply_rotary_pos_emb``, which the attention
  layers look up at call time) is replaced, once per process, by a dispatcher. The dispatcher
  calls :func:`flashkernels.apply_rotary_pos_emb` only while the forward of an attention module
  patched by ``apply`` is running (a ``contextvars`` flag set by that module's instance-level
  ``forward`` wrapper); everywhere else -- other models, unpatched instances of the same class,
  other threads -- it calls the original function. Other modeling modules that imported the
  original function by name keep it.
* **Attention** -- an attention function is registered once under the name "fk_attention"
  (:data:`ATTENTION_NAME`; a name with "flash" in it would make transformers treat it as
  flash-attention) in ``transformers.AttentionInterface`` (and, so that the model builds the same
  boolean 4-D masks as for "sdpa", ``sdpa_mask`` under that name in
  ``transformers.AttentionMaskInterface``), and the model is switched to it with
  ``model.set_attn_implementation("fk_attention")`` (the
  config's ``_attn_implementation``; sub-models too). The function calls
  :func:`flashkernels.scaled_dot_product_attention` with the mask Hugging Face passes (bool,
  True = attend, or an additive float mask, shape (B, 1 or H, Sq, Sk)), ``is_causal`` when there
  is no mask (as transformers' SDPA path decides it), ``enable_gqa`` when the key/value heads are
  fewer, and the layer's ``scaling``. Differences from eager: a query row that sees no key
  (a left-padding position) gives 0 (eager averages all values, torch SDPA gives NaN); those
  positions are padding and no other position attends them. No attention weights are returned
  (``output_attentions`` gives None). Sliding-window layers (Mistral's ``sliding_window``,
  Qwen2/Qwen3's sliding layers): the window is in the mask transformers builds for them; when it
  builds none (no padding and the keys fit the window) the kernels get the window themselves,
  key j seen by query i iff i - sliding_window < j <= i (bottom-right aligned), blocks outside
  it skipped.

* **Mask set-up** -- transformers checks the position ids for packed sequences before it builds
  the mask (``masking_utils.find_packed_sequence_indices``, called when no attention mask and no
  cache are given), and that check reads a GPU tensor on the host: one device synchronisation a
  forward, after which the GPU idles until the host has launched the next kernels. When the
  caller gives no ``position_ids``, the model makes them ``arange(seqlen)`` itself, and that
  check's answer is known: no packing. So every ``<Arch>Model`` module gets an instance-level
  ``forward`` that, when called without ``position_ids``, sets a ``contextvars`` flag for its
  run, and ``masking_utils.find_packed_sequence_indices`` is replaced, once per process, by a
  function that returns None (what the original returns for an arange, without the sync) while
  that flag is set, and calls the original everywhere else. Position ids given by the caller
  (packed sequences) are checked by transformers as before.

Not supported (raise ``NotImplementedError``): attention logit soft-capping, attention dropout > 0
while training, position biases and attention sinks.

Backends: ``backend=None`` (default) lets every call follow ``$FLASHKERNELS_BACKEND``, else
"auto" (the Triton kernels on a CUDA GPU, the exact PyTorch path on a CPU); "triton" or
"reference" pins all patched calls of this model. Calling ``apply`` again on a patched model only
changes the backend.
"""
from __future__ import annotations

import contextvars
import functools
import importlib
import inspect
import types
import warnings

import torch

from .. import _backend
from ..ops.attention.api import _attention, scaled_dot_product_attention
from ..ops.rms_norm.api import rms_norm
from ..ops.rope.api import apply_rotary_pos_emb as _fk_apply_rotary_pos_emb
from ..ops.swiglu.api import geglu, swiglu

__all__ = ["apply", "ATTENTION_NAME", "SUPPORTED_MODEL_TYPES", "attention_forward"]

# Not "flashkernels": transformers treats every implementation name containing "flash" as a
# flash-attention variant (is_flash_attention_requested: it tries to import a flash-attn kernel for
# it and switches models to the packed, unpadded input path). A name with "sdpa", "flex", "eager",
# "paged" or "/" would trigger other special cases.
ATTENTION_NAME = "fk_attention"
MIN_TRANSFORMERS = (5, 24)

# model_type -> (modeling module, class-name prefix, norm kind)
SUPPORTED_MODEL_TYPES = {
    "llama": ("transformers.models.llama.modeling_llama", "Llama", "llama"),
    "qwen2": ("transformers.models.qwen2.modeling_qwen2", "Qwen2", "llama"),
    "qwen3": ("transformers.models.qwen3.modeling_qwen3", "Qwen3", "llama"),
    "mistral": ("transformers.models.mistral.modeling_mistral", "Mistral", "llama"),
    "gemma": ("transformers.models.gemma.modeling_gemma", "Gemma", "gemma"),
}

# hidden_act -> None (SwiGLU) or the GeGLU approximation
_ACTIVATIONS = {"silu": None, "swish": None, "gelu_pytorch_tanh": "tanh", "gelu": "none"}

# While a patched attention module runs: a 1-tuple holding its backend (None = from the env).
_ROPE_ACTIVE: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("flashkernels_hf_rope", default=None)
# While a patched <Arch>Model runs a forward called without position_ids (they are an arange).
_ARANGE_POSITIONS: contextvars.ContextVar[bool] = contextvars.ContextVar("flashkernels_hf_arange", default=False)


# --------------------------------------------------------------------------------------------
# the patched forwards (module-level functions bound with MethodType: deepcopy-safe)
# --------------------------------------------------------------------------------------------

def _rms_norm_forward(self, hidden_states):
    eps_attr, offset, casting_mode = self._flashkernels_norm
    weight = self.weight
    if weight.dtype != hidden_states.dtype:  # Hugging Face promotes; keep its exact behaviour
        return type(self).forward(self, hidden_states)
    return rms_norm(hidden_states, weight, float(getattr(self, eps_attr)), offset=offset,
                    casting_mode=casting_mode, backend=self._flashkernels_backend)


def _glu_mlp_forward(self, x):
    gate, up = self.gate_proj(x), self.up_proj(x)
    approximate = self._flashkernels_act
    if approximate is None:
        h = swiglu(gate, up, backend=self._flashkernels_backend)
    else:
        h = geglu(gate, up, approximate=approximate, backend=self._flashkernels_backend)
    return self.down_proj(h)


def _attention_module_forward(self, *args, **kwargs):
    token = _ROPE_ACTIVE.set((self._flashkernels_backend,))
    try:
        return type(self).forward(self, *args, **kwargs)
    finally:
        _ROPE_ACTIVE.reset(token)


def _rope_dispatcher(original):
    """A drop-in for a modeling module's ``apply_rotary_pos_emb`` that routes to flashkernels
    only inside patched attention modules."""
    sig = inspect.signature(original)

    @functools.wraps(original)
    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        active = _ROPE_ACTIVE.get()
        if active is None:
            return original(q, k, cos, sin, *args, **kwargs)
        bound = sig.bind(q, k, cos, sin, *args, **kwargs)
        bound.apply_defaults()
        unsqueeze_dim = bound.arguments.get("unsqueeze_dim", 1)
        # cos/sin are already per position (an older signature's position_ids is unused there).
        if (cos.dtype != q.dtype or sin.dtype != q.dtype or k.dtype != q.dtype or cos.dim() not in (2, 3)
                or unsqueeze_dim not in (1, 2) or q.dim() != 4 or k.dim() != 4):
            return original(q, k, cos, sin, *args, **kwargs)  # e.g. mixed dtypes under autocast
        return _fk_apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim, backend=active[0])

    apply_rotary_pos_emb._flashkernels_original = original
    return apply_rotary_pos_emb


def _base_model_forward(self, *args, **kwargs):
    # position_ids is the third positional parameter of every supported <Arch>Model.forward
    if len(args) > 2 or kwargs.get("position_ids") is not None:
        return type(self).forward(self, *args, **kwargs)
    token = _ARANGE_POSITIONS.set(True)
    try:
        return type(self).forward(self, *args, **kwargs)
    finally:
        _ARANGE_POSITIONS.reset(token)


def _packed_check_dispatcher(original):
    """A drop-in for ``masking_utils.find_packed_sequence_indices``: None without reading the GPU
    while a patched model runs a forward whose position ids it made itself (an arange: no packed
    sequences, the original's answer too), the original everywhere else."""

    @functools.wraps(original)
    def find_packed_sequence_indices(position_ids):
        if _ARANGE_POSITIONS.get():
            return None
        return original(position_ids)

    find_packed_sequence_indices._flashkernels_original = original
    return find_packed_sequence_indices


# --------------------------------------------------------------------------------------------
# the attention function
# --------------------------------------------------------------------------------------------

def attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                      **kwargs):
    """The function registered as ``AttentionInterface["fk_attention"]``.

    query (B, Hq, Sq, D), key/value (B, Hkv, Sk, D), ``attention_mask`` None or the 4-D bool
    (True = attend) / additive float mask Hugging Face builds. Returns ``(out (B, Sq, Hq, D),
    None)``.
    """
    owner = type(module).__name__
    sliding = kwargs.get("sliding_window")
    if kwargs.get("softcap") is not None:
        raise NotImplementedError(f"flashkernels attention ({owner}): attention logit soft-capping "
                                  f"(softcap={kwargs['softcap']}) is not supported yet")
    for name in ("position_bias", "s_aux", "sinks"):
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"flashkernels attention ({owner}): {name} is not supported")
    if dropout:
        raise NotImplementedError(
            f"flashkernels attention ({owner}): attention dropout is not supported (got dropout={dropout} "
            f"in training mode); set config.attention_dropout = 0.0")
    if kwargs.get("output_attentions", False):
        warnings.warn("flashkernels attention does not return attention weights (output_attentions gives None)",
                      stacklevel=2)
    q_len = query.shape[2]
    # As transformers' SDPA path: the causal flag stands in for a mask only when none was built.
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    is_causal = bool(q_len > 1 and attention_mask is None and is_causal)
    if is_causal and key.shape[2] > q_len:  # prefill into an empty static cache
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    if sliding is not None and attention_mask is None:
        # transformers left the window out (it builds no mask when it cannot cut anything, as far
        # as it knows): apply it here, key j for query i iff i - sliding < j <= i, the queries
        # being the last q_len positions of the keys.
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        out, _ = _attention(query, key, value, mask=None, causal=bool(q_len > 1 and is_causal),
                            causal_align="bottom_right", scale=float(scale),
                            backend=getattr(module, "_flashkernels_backend", None),
                            bshd=query.stride(1) < query.stride(2),  # out in query's memory order, as SDPA
                            window_size=(int(sliding) - 1, 0))
        return out.transpose(1, 2).contiguous(), None
    out = scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=is_causal, scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1], backend=getattr(module, "_flashkernels_backend", None))
    return out.transpose(1, 2).contiguous(), None


# --------------------------------------------------------------------------------------------
# apply
# --------------------------------------------------------------------------------------------

def _import_transformers():
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("flashkernels.integrations.transformers needs transformers: "
                          "pip install 'flashkernels[hf]'") from exc
    version = tuple(int(p) for p in transformers.__version__.split(".")[:2] if p.isdigit())
    if version < MIN_TRANSFORMERS or not hasattr(transformers, "AttentionInterface"):
        raise ImportError(f"flashkernels.integrations.transformers needs transformers >= "
                          f"{'.'.join(map(str, MIN_TRANSFORMERS))}, found {transformers.__version__}")
    return transformers


def _register_attention(transformers):
    transformers.AttentionInterface.register(ATTENTION_NAME, attention_forward)
    from transformers.masking_utils import sdpa_mask

    transformers.AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    from transformers import masking_utils

    if not hasattr(masking_utils.find_packed_sequence_indices, "_flashkernels_original"):
        masking_utils.find_packed_sequence_indices = _packed_check_dispatcher(
            masking_utils.find_packed_sequence_indices)


def _check_config(model, config, model_type):
    name = type(model).__name__
    if getattr(config, "attn_logit_softcapping", None) is not None:
        raise NotImplementedError(f"{name}: attention logit soft-capping (attn_logit_softcapping="
                                  f"{config.attn_logit_softcapping}) is not supported by flashkernels yet")


def apply(model, *, backend=None):
    """Swap a Llama-family model's RMSNorms, MLP activation, rotary application and attention for
    flashkernels, in place; returns ``model``. See the module docstring for exactly what changes.

    Args:
        model: a transformers Llama, Qwen2, Qwen3, Mistral or Gemma model (any head).
        backend: None (each call follows ``$FLASHKERNELS_BACKEND``, else "auto"), "auto",
            "triton" or "reference".
    """
    transformers = _import_transformers()
    if backend is not None:
        backend = _backend.requested_backend(backend)  # validates
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if not isinstance(model, torch.nn.Module) or model_type not in SUPPORTED_MODEL_TYPES:
        raise NotImplementedError(
            f"flashkernels.integrations.transformers.apply: {type(model).__name__} (model_type={model_type!r}) "
            f"is not supported; supported model types: {', '.join(SUPPORTED_MODEL_TYPES)} "
            f"(Llama, Qwen2, Qwen3, Mistral, Gemma)")
    module_name, prefix, norm_kind = SUPPORTED_MODEL_TYPES[model_type]
    modeling = importlib.import_module(module_name)
    norm_cls = getattr(modeling, f"{prefix}RMSNorm")
    mlp_cls = getattr(modeling, f"{prefix}MLP")
    attn_cls = getattr(modeling, f"{prefix}Attention")
    _check_config(model, config, model_type)

    hidden_act = getattr(config, "hidden_act", None)
    if hidden_act not in _ACTIVATIONS:
        raise NotImplementedError(f"{type(model).__name__}: hidden_act={hidden_act!r} is not supported "
                                  f"(expected one of {', '.join(map(repr, _ACTIVATIONS))})")

    norms = [m for m in model.modules() if isinstance(m, norm_cls)]
    mlps = [m for m in model.modules() if isinstance(m, mlp_cls)]
    attns = [m for m in model.modules() if isinstance(m, attn_cls)]
    base_cls = getattr(modeling, f"{prefix}Model", None)
    bases = [m for m in model.modules() if base_cls is not None and isinstance(m, base_cls)
             and list(inspect.signature(base_cls.forward).parameters)[1:4] == [
                 "input_ids", "attention_mask", "position_ids"]]
    if not (norms and mlps and attns):
        raise NotImplementedError(
            f"{type(model).__name__}: found {len(norms)} {norm_cls.__name__}, {len(mlps)} {mlp_cls.__name__} "
            f"and {len(attns)} {attn_cls.__name__} modules; flashkernels expects the stock {prefix} modules")
    for m in mlps:
        if not all(isinstance(getattr(m, n, None), torch.nn.Module) for n in ("gate_proj", "up_proj", "down_proj")):
            raise NotImplementedError(f"{type(model).__name__}: {type(m).__name__} without gate_proj/up_proj/down_proj")

    # Global registrations, idempotent.
    _register_attention(transformers)
    if not hasattr(modeling.apply_rotary_pos_emb, "_flashkernels_original"):
        modeling.apply_rotary_pos_emb = _rope_dispatcher(modeling.apply_rotary_pos_emb)

    norm_spec = ("eps", 1.0, "gemma") if norm_kind == "gemma" else ("variance_epsilon", 0.0, "llama")
    for m in norms:
        m._flashkernels_norm = norm_spec
        m._flashkernels_backend = backend
        m.forward = types.MethodType(_rms_norm_forward, m)
    for m in mlps:
        m._flashkernels_act = _ACTIVATIONS[hidden_act]
        m._flashkernels_backend = backend
        m.forward = types.MethodType(_glu_mlp_forward, m)
    for m in attns:
        m._flashkernels_backend = backend
        m.forward = types.MethodType(_attention_module_forward, m)
    for m in bases:
        m.forward = types.MethodType(_base_model_forward, m)

    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(ATTENTION_NAME)
    else:  # a bare decoder without the PreTrainedModel API
        config._attn_implementation = ATTENTION_NAME
    if getattr(config, "_attn_implementation", None) != ATTENTION_NAME:
        raise RuntimeError(f"{type(model).__name__}: could not set the attention implementation to "
                           f"{ATTENTION_NAME!r} (it is {config._attn_implementation!r})")
    return model
