"""flashkernels.integrations.transformers.apply on tiny Llama-family models (random weights, no
download): logits and a few training steps against the eager model, under the tolerance policy
(ref = the eager model in float64, pt = the eager model in the test dtype)."""
import copy

import pytest
import torch

transformers = pytest.importorskip("transformers", minversion="5.24")  # the hf extra's floor

import flashkernels  # noqa: E402
import flashkernels.integrations.transformers as fk_hf  # noqa: E402
from helpers import assert_close_policy  # noqa: E402

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=128, head_dim=16, max_position_embeddings=64)
B, S = 2, 17



@pytest.fixture(autouse=True)
def _one_thread():
    """The models are tiny: one intra-op thread. With two on a busy 2-core CI machine the OpenMP
    threads spin against each other and these tests take 5x longer."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


ARCHS = [("Llama", {}), ("Qwen2", {}), ("Qwen3", {}), ("Mistral", {"sliding_window": None}), ("Gemma", {})]


def _arch_params():
    out = []
    for name, extra in ARCHS:
        present = hasattr(transformers, f"{name}ForCausalLM")
        out.append(pytest.param(name, extra, id=name,
                                marks=pytest.mark.skipif(not present, reason=f"no {name} in this transformers")))
    return out


def build(name, extra=None, *, seed=0, **overrides):
    """An eager float32 model with random weights (norm weights perturbed off their init)."""
    cfg_cls = getattr(transformers, f"{name}Config")
    model_cls = getattr(transformers, f"{name}ForCausalLM")
    torch.manual_seed(seed)
    cfg = cfg_cls(**{**TINY, **(extra or {}), **overrides}, attn_implementation="eager")
    model = model_cls(cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def trio(model, backend="reference"):
    """(out = patched copy, pt = eager test dtype, ref = eager float64)."""
    out = fk_hf.apply(copy.deepcopy(model), backend=backend)
    return out, model, copy.deepcopy(model).double()


def inputs(seed=1, padded=None):
    """(input_ids, attention_mask): no mask, or "right" / "left" padding of 5 and 3 tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, TINY["vocab_size"], (B, S), generator=g)
    if padded is None:
        return ids, None
    mask = torch.ones(B, S, dtype=torch.long)
    for b, n in enumerate((5, 3)):
        if padded == "right":
            mask[b, S - n:] = 0
        else:
            mask[b, :n] = 0
    return ids, mask


@pytest.mark.parametrize("name,extra", _arch_params())
@pytest.mark.parametrize("padded", [None, "right"], ids=["full", "padded"])
def test_logits_match_eager(name, extra, padded):
    out_m, pt_m, ref_m = trio(build(name, extra))
    assert out_m.config._attn_implementation == fk_hf.ATTENTION_NAME
    assert pt_m.config._attn_implementation == "eager"  # the copy was patched, not the original
    ids, mask = inputs(padded=padded)
    with torch.no_grad():
        out, pt, ref = (m(ids, attention_mask=mask).logits for m in (out_m, pt_m, ref_m))
    assert_close_policy(out, ref, pt, dtype=torch.float32, name=f"{name} logits")


@pytest.mark.parametrize("name,extra", _arch_params())
def test_left_padding_matches_eager(name, extra):
    """Left padding leaves query rows that see no key: flashkernels gives 0 there, eager a
    uniform average (and its float64 run NaN, as it takes the softmax of -inf rows in float32),
    so the real tokens are compared with the float32 eager model at the fp32 target."""
    out_m, pt_m, _ = trio(build(name, extra))
    ids, mask = inputs(padded="left")
    with torch.no_grad():
        out, pt = (m(ids, attention_mask=mask).logits for m in (out_m, pt_m))
    keep = mask.bool()
    assert out.isfinite().all()
    torch.testing.assert_close(out[keep], pt[keep], rtol=0, atol=1e-5)


def causal_lm_loss(model, ids):
    """The next-token cross entropy of ``ids`` in the model's own dtype (what ``labels=ids`` gives,
    but transformers' loss casts the logits to float32, which would round the float64 reference's
    loss to float32 and leave the policy a bound of one float32 step)."""
    logits = model(ids).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


@pytest.mark.parametrize("name,extra", _arch_params())
def test_training_losses_match_eager(name, extra):
    models = trio(build(name, extra))
    ids, _ = inputs(seed=2)
    losses = []
    for m in models:
        m.train()
        torch.manual_seed(123)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        run = []
        for _ in range(3):
            loss = causal_lm_loss(m, ids)
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.append(loss.detach())
        losses.append(torch.stack(run))
    out, pt, ref = losses
    assert ref.dtype == torch.float64
    # The losses after a step depend on the gradients: the gradient factor of the policy.
    assert_close_policy(out, ref, pt, factor=3.0, dtype=torch.float32, name=f"{name} losses")


PACKED = ((10, 7), (5, 12))  # two sequences packed into each row of S = 17 tokens


def check_packed(name, out_m, pt_m, ref_m, ids):
    """The patched model's logits for ``ids`` packed as PACKED (position ids that restart)
    against each sequence run alone through the eager models, under the fp32 policy."""
    pos = torch.tensor([list(range(n0)) + list(range(n1)) for n0, n1 in PACKED], device=ids.device)
    with torch.no_grad():
        out = out_m(ids, position_ids=pos, use_cache=False).logits
        alone = [[], []]
        for b, (n0, n1) in enumerate(PACKED):
            for start, n in ((0, n0), (n0, n1)):
                seq = ids[b:b + 1, start:start + n]
                for k, m in enumerate((pt_m, ref_m)):
                    alone[k].append(m(seq, use_cache=False).logits[0])
    pt, ref = (torch.cat(a).reshape(out.shape) for a in alone)
    assert_close_policy(out, pt, ref, dtype=torch.float32, name=f"{name} packed logits")


@pytest.mark.parametrize("name,extra", _arch_params())
def test_packed_position_ids_match_each_sequence_alone(name, extra):
    """Position ids that restart mark packed sequences (looked for only without a cache):
    transformers' packed-sequence check runs (the patched model skips it only when it made the
    positions itself), and each sequence's logits equal those of the sequence run alone."""
    check_packed(name, *trio(build(name, extra)), inputs(seed=3)[0])


@pytest.mark.gpu
@pytest.mark.parametrize("name,extra", [*_arch_params(), pytest.param("Mistral", {"sliding_window": 32},
                                                                      id="Mistral-window")])
def test_models_match_eager_cuda(name, extra):
    """On the GPU, fp32 models through the kernels (backend "triton"): logits without position ids
    (the packed-sequence check skipped) and with packed ones (checked: each sequence as run
    alone) against eager; Mistral-window: a window longer than the sequence, so transformers
    builds no mask and the kernels get the window (the output in query's memory order)."""
    if not hasattr(transformers, f"{name}ForCausalLM"):
        pytest.skip(f"no {name} in this transformers")
    out_m, pt_m, ref_m = (m.cuda() for m in trio(build(name, extra), backend="triton"))
    ids = inputs(seed=3)[0].cuda()
    with torch.no_grad():
        out, pt, ref = (m(ids, use_cache=False).logits for m in (out_m, pt_m, ref_m))
    assert_close_policy(out, ref, pt, dtype=torch.float32, name=f"{name} logits")
    check_packed(name, out_m, pt_m, ref_m, ids)


def test_packed_check_skipped_only_for_positions_the_model_made(monkeypatch):
    """transformers' packed-sequence check (a GPU read on CUDA) is not called by a patched model's
    forward without position_ids, is called with them, and by unpatched models as before."""
    from transformers import masking_utils

    model = build("Llama")
    patched = fk_hf.apply(copy.deepcopy(model), backend="reference")
    hf_check = masking_utils.find_packed_sequence_indices._flashkernels_original
    calls = []

    def counted(position_ids):
        calls.append(position_ids)
        return hf_check(position_ids)

    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", fk_hf._packed_check_dispatcher(counted))
    ids, _ = inputs()
    with torch.no_grad():
        patched(ids, use_cache=False)
        assert calls == []
        patched(ids, position_ids=torch.arange(S).expand(B, S), use_cache=False)
        assert len(calls) == 1
        model.set_attn_implementation("sdpa")
        model(ids, use_cache=False)  # unpatched: checks as transformers does
        assert len(calls) == 2
    assert fk_hf._ARANGE_POSITIONS.get() is False  # reset after each forward


def _count(monkeypatch, module, attr, counts):
    fn = getattr(module, attr)

    def counted(*a, **k):
        counts[attr] = counts.get(attr, 0) + 1
        return fn(*a, **k)

    monkeypatch.setattr(module, attr, counted)


def test_patched_model_calls_flashkernels_and_others_do_not(monkeypatch):
    counts = {}
    for attr in ("rms_norm", "swiglu", "geglu", "scaled_dot_product_attention", "_fk_apply_rotary_pos_emb"):
        _count(monkeypatch, fk_hf, attr, counts)
    model = build("Llama")
    other = copy.deepcopy(model)
    other_sdpa = copy.deepcopy(model)
    other_sdpa.set_attn_implementation("sdpa")
    patched = fk_hf.apply(copy.deepcopy(model), backend="reference")
    ids, _ = inputs()
    with torch.no_grad():
        other(ids)
        other_sdpa(ids)
    assert counts == {}, "an unpatched model of the same class went through flashkernels"
    with torch.no_grad():
        patched(ids)
    L = TINY["num_hidden_layers"]
    assert counts == {"rms_norm": 2 * L + 1, "swiglu": L, "scaled_dot_product_attention": L,
                      "_fk_apply_rotary_pos_emb": L}
    # deepcopy of a patched model: the copy's patched forwards use the copy's weights
    clone = copy.deepcopy(patched)
    with torch.no_grad():
        clone.model.norm.weight.add_(1.0)
        assert not torch.equal(clone(ids).logits, patched(ids).logits)


def test_gemma_uses_geglu_and_gemma_norm(monkeypatch):
    counts = {}
    for attr in ("swiglu", "geglu"):
        _count(monkeypatch, fk_hf, attr, counts)
    patched = fk_hf.apply(build("Gemma"), backend="reference")
    norm = patched.model.norm
    assert norm._flashkernels_norm == ("eps", 1.0, "gemma")
    with torch.no_grad():
        patched(inputs()[0])
    assert counts == {"geglu": TINY["num_hidden_layers"]}


def test_unsupported_raise_clearly():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64,
                                                                n_positions=32))
    with pytest.raises(NotImplementedError, match="GPT2LMHeadModel"):
        fk_hf.apply(gpt2)
    with pytest.raises(ValueError, match="backend"):
        fk_hf.apply(build("Llama"), backend="cuda")


SLIDING = [pytest.param("Mistral", {"sliding_window": 6}, id="Mistral-window6"),
           pytest.param("Qwen2", {"use_sliding_window": True, "sliding_window": 5, "max_window_layers": 1},
                        id="Qwen2-window5-layer1")]


@pytest.mark.parametrize("name,extra", SLIDING)
@pytest.mark.parametrize("padded", [None, "right"], ids=["full", "padded"])
def test_sliding_window_matches_eager(name, extra, padded):
    """Windows shorter than the sequence (17 tokens), through the mask transformers builds. With
    right padding, padded positions whose window holds only padding see no key (0 here, NaN in
    the float64 eager model): the real tokens are compared."""
    if not hasattr(transformers, f"{name}ForCausalLM"):
        pytest.skip(f"no {name} in this transformers")
    out_m, pt_m, ref_m = trio(build(name, extra))
    ids, mask = inputs(padded=padded)
    with torch.no_grad():
        out, pt, ref = (m(ids, attention_mask=mask).logits for m in (out_m, pt_m, ref_m))
    keep = mask.bool() if mask is not None else torch.ones(ids.shape, dtype=torch.bool)
    assert_close_policy(out[keep], ref[keep], pt[keep], dtype=torch.float32, name=f"{name} logits")
    # and the window has an effect: the same model without it differs
    with torch.no_grad():
        full = build(name, {k: v for k, v in extra.items() if k == "max_window_layers"})(ids, attention_mask=mask)
    assert (full.logits - pt).abs().max() > 1e-3


@pytest.mark.parametrize("memory", ["bhsd", "bshd"])
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_sliding_window_without_a_mask_is_applied_by_the_kernels(backend, memory):
    """When transformers passes no mask, the attention function applies the window itself:
    equal to the same call with the window written out as a bool mask, for q, k, v contiguous
    and as (B, H, S, D) views of (B, S, H, D) memory (as transformers passes them)."""
    from flashkernels import _backend

    if backend == "triton" and _backend.triton_unavailable_reason(torch.device("cpu")) is not None:
        pytest.skip("Triton cannot run here")

    class Layer(torch.nn.Module):
        is_causal = True
        _flashkernels_backend = backend

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, 19, 16, generator=g) for h in (4, 2, 2))
    if memory == "bshd":
        q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    out, _ = fk_hf.attention_forward(Layer(), q, k, v, None, scaling=0.25, sliding_window=5)
    i, j = torch.arange(19)[:, None], torch.arange(19)[None, :]
    allowed = (j <= i) & (j > i - 5)
    want = flashkernels.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=0.25, enable_gqa=True,
                                                     backend=backend)
    torch.testing.assert_close(out, want.transpose(1, 2), rtol=1e-5, atol=1e-6)


def test_attention_dropout_in_training_raises():
    model = fk_hf.apply(build("Llama", attention_dropout=0.1), backend="reference")
    ids, _ = inputs()
    with torch.no_grad():
        model(ids)  # eval: dropout is 0
    model.train()
    with pytest.raises(NotImplementedError, match="dropout"):
        model(ids)


def test_triton_kernels_are_called(monkeypatch):
    """backend="triton" (through the interpreter on CPU): every op launches its Triton kernel,
    forward and backward, and the result matches the eager model."""
    from flashkernels import _backend

    reason = _backend.triton_unavailable_reason(torch.device("cpu"))
    if reason is not None:
        pytest.skip(reason)
    from flashkernels.ops.attention import autograd as att
    from flashkernels.ops.rms_norm import autograd as rms
    from flashkernels.ops.rope import autograd as rope
    from flashkernels.ops.swiglu import autograd as glu

    counts = {}
    for mod, attr in ((att, "flash_attention"), (rms, "rms_norm_triton"), (rope, "rope_qk"), (glu, "gated_activation")):
        _count(monkeypatch, mod, attr, counts)
    out_m, pt_m, ref_m = trio(build("Llama", num_hidden_layers=1), backend="triton")
    ids = inputs()[0][:, :9]
    results = []
    for m in (out_m, pt_m, ref_m):
        loss = m(ids, labels=ids).loss
        loss.backward()
        results.append((loss.detach(), m.model.embed_tokens.weight.grad, m.model.layers[0].mlp.gate_proj.weight.grad))
    assert counts == {"rms_norm_triton": 3, "rope_qk": 1, "flash_attention": 1, "gated_activation": 1}
    (lo, *go), (lp, *gp), (lr, *gr) = results
    assert_close_policy(lo, lr, lp, dtype=torch.float32, name="loss")
    for name, o, p, r in zip(("d embed", "d gate_proj"), go, gp, gr):
        assert_close_policy(o, r, p, factor=3.0, dtype=torch.float32, name=name)
