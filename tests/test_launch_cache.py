"""flashkernels._launch.cached_launch on the CPU: a JITFunction whose ``run`` is replaced by a
recorder stands in for the GPU, so these check the cache's logic (keys, hits, what the launcher
gets, when it steps aside); the GPU tests run the real kernels through it, with
$FLASHKERNELS_LAUNCH_CACHE=check comparing every hit with Triton's own lookup."""
import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from flashkernels import _launch  # noqa: E402


def _body(X, Y, n, scale, desc=None, BLOCK: tl.constexpr = 16, FLAG: tl.constexpr = False):
    pass


class _Compiled:
    """What kernel[grid] returns: records the launcher's calls."""
    function = "fn"
    packed_metadata = "meta"

    def __init__(self, spec):
        self.spec = spec
        self.launches = []

    def run(self, gx, gy, gz, stream, function, packed, launch_metadata, enter, exit_, *args):
        self.launches.append(((gx, gy, gz), stream, args))


class _Kernel(triton.runtime.jit.JITFunction):
    """A JITFunction over _body whose compile+launch is a recorder: one _Compiled per distinct
    (int classes, dtypes, alignments, constexprs), as Triton's own cache would hand out."""

    def __init__(self, fn=_body):
        super().__init__(fn)
        self.compiled = {}
        self.slow_calls = 0

    def run(self, *args, grid, warmup, **kwargs):
        self.slow_calls += not warmup
        spec = tuple((a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor) else
                     (type(a), a == 1, a % 16 == 0) if type(a) is int else type(a) for a in args)
        spec += tuple(sorted((k, str(v)) for k, v in kwargs.items()))
        return self.compiled.setdefault(spec, _Compiled(spec))


@pytest.fixture
def fast(monkeypatch):
    """The fast path on (whatever machine this runs on), device 0, stream 7."""
    monkeypatch.setattr(_launch, "_OK", True)
    monkeypatch.setattr(_launch, "_JIT", triton.runtime.jit.JITFunction)
    monkeypatch.delenv(_launch.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda device: 7, raising=False)
    from torch._library.triton import set_wrap_triton_enabled
    with set_wrap_triton_enabled(False):
        yield


def test_second_call_skips_triton_and_passes_every_argument(fast):
    k = _Kernel()
    x, y = torch.zeros(64), torch.zeros(64)
    first = _launch.cached_launch(k, (3,), x, y, 100, 0.5, BLOCK=32)
    assert k.slow_calls == 1 and first.launches == []
    x2 = torch.ones(64)
    again = _launch.cached_launch(k, (5, 2), x2, y, 100, 0.25, BLOCK=32)
    assert again is first and k.slow_calls == 1
    grid, stream, args = first.launches[0]
    assert grid == (5, 2, 1) and stream == 7
    # positional, then desc's default (None), then the constexprs: BLOCK given, FLAG's default
    assert args[0] is x2 and args[1:] == (y, 100, 0.25, None, 32, False)


def test_keys_tell_apart_what_triton_specialises(fast):
    k = _Kernel()
    buf = torch.zeros(80)
    base = (buf[:64], buf[:64], 100, 0.5)
    _launch.cached_launch(k, (1,), *base)
    variants = [
        (buf[:64], buf[:64], 1, 0.5),             # an int equal to 1
        (buf[:64], buf[:64], 96, 0.5),            # a multiple of 16
        (buf[:64], buf[:64], 2**40, 0.5),         # an int64
        (buf[1:65], buf[:64], 100, 0.5),          # a pointer not 16-byte aligned
        (buf[:64].half(), buf[:64], 100, 0.5),    # another dtype
        (buf[:64], buf[:64], 100, 1),             # an int where a float was
        (buf[:64], buf[:64], True, 0.5),          # a bool where an int was (True == 1: the class of 96)
    ]
    for args in variants:
        before = k.slow_calls
        _launch.cached_launch(k, (1,), *args)
        assert k.slow_calls == before + 1, args  # a miss: Triton was asked
    before = k.slow_calls
    _launch.cached_launch(k, (1,), *base, FLAG=True)  # another constexpr value
    _launch.cached_launch(k, (1,), *base, num_warps=8)  # another launch option
    assert k.slow_calls == before + 2
    before = k.slow_calls
    _launch.cached_launch(k, (1,), buf[16:80], buf[:64], 3, 0.1)  # same classes as base: a hit
    assert k.slow_calls == before


def test_runtime_argument_by_keyword_and_tma_descriptor(fast):
    k = _Kernel()
    x = torch.zeros(64)
    layout = object()
    d = _launch.TmaDesc(x, [8, 8], [8, 1], [8, 8], layout)
    # the miss hands Triton a real descriptor (built from the TmaDesc); Gluon's needs a layout of
    # its own type, so the real-descriptor step is stubbed here
    seen = []
    orig = _launch.real_desc
    _launch.real_desc = lambda a: (seen.append(a), a)[1]
    try:
        _launch.cached_launch(k, (1,), x, x, 16, 0.5, desc=d)
        d2 = _launch.TmaDesc(torch.ones(64), [8, 8], [8, 1], [8, 8], layout)
        compiled = _launch.cached_launch(k, (1,), x, x, 32, 0.5, desc=d2)
    finally:
        _launch.real_desc = orig
    assert d in seen and k.slow_calls == 1
    assert compiled.launches[0][2][4] is d2  # the hit passes the TmaDesc itself to the launcher
    before = k.slow_calls
    d3 = _launch.TmaDesc(x, [8, 8], [8, 1], [4, 8], layout)  # another block shape: a miss
    _launch.real_desc = lambda a: a
    try:
        _launch.cached_launch(k, (1,), x, x, 32, 0.5, desc=d3)
    finally:
        _launch.real_desc = orig
    assert k.slow_calls == before + 1


def test_steps_aside(fast, monkeypatch):
    k = _Kernel()
    x = torch.zeros(64)
    _launch.cached_launch(k, (1,), x, x, 16, 0.5)
    monkeypatch.setenv(_launch.ENV_VAR, "0")
    _launch.cached_launch(k, (1,), x, x, 16, 0.5)
    assert k.slow_calls == 2  # turned off: every call through kernel[grid]
    monkeypatch.delenv(_launch.ENV_VAR)
    from triton import knobs
    hook = knobs.runtime.launch_enter_hook
    if hasattr(hook, "add"):  # a profiler's launch hook: Triton must see each launch
        hook.add(print)
        try:
            _launch.cached_launch(k, (1,), x, x, 16, 0.5)
        finally:
            hook.remove(print)
        assert k.slow_calls == 3
    before = k.slow_calls
    _launch.cached_launch(k, (1,), x, x, 16, "text")  # an argument type the key does not cover
    assert k.slow_calls == before + 1
    from torch._library.triton import set_wrap_triton_enabled
    with set_wrap_triton_enabled(True):  # tracing: through wrap_triton, never the fast path
        calls = []
        monkeypatch.setattr(_launch, "launchable", lambda kern: (calls.append(kern), kern)[1])
        _launch.cached_launch(k, (1,), x, x, 16, 0.5)
        assert calls == [k]
        _launch.cached_launch(k, (1,), x, x, 16, 0.5, fk_traceable=False)  # Gluon's: no wrap_triton
        assert calls == [k]


def test_constexpr_given_positionally_is_not_cached(fast):
    def body(X, BLOCK: tl.constexpr):
        pass

    k = _Kernel(body)
    x = torch.zeros(4)
    _launch.cached_launch(k, (1,), x, 16)
    _launch.cached_launch(k, (1,), x, 32)  # a different constexpr, same int class: must not hit
    assert k.slow_calls == 2


def test_check_mode_catches_a_key_too_coarse(fast, monkeypatch):
    monkeypatch.setenv(_launch.ENV_VAR, "check")
    k = _Kernel()
    x = torch.zeros(64)
    _launch.cached_launch(k, (1,), x, x, 16, 0.5)
    _launch.cached_launch(k, (1,), x, x, 32, 0.5)  # Triton agrees: the same kernel
    # a stand-in Triton that tells apart ints the key lumps together (16 and 32)
    orig = _Kernel.run

    def finer(self, *args, grid, warmup, **kwargs):
        c = orig(self, *args, grid=grid, warmup=warmup, **kwargs)
        return c if args[2] == 16 else _Compiled("other")
    monkeypatch.setattr(_Kernel, "run", finer)
    with pytest.raises(AssertionError, match="another specialisation"):
        _launch.cached_launch(k, (1,), x, x, 32, 0.5)


@pytest.mark.gpu
def test_hits_on_the_gpu_give_the_first_launchs_results():
    """The real kernels: a first call (a miss: Triton's own launch), a call on other inputs of the
    same specialisation (a hit), then the first inputs again (a hit): the same bits as the first
    call (dQ within atomics' rounding), and the caches did not grow after the first call."""
    import flashkernels
    from flashkernels.ops.attention import launch as att_launch
    from flashkernels.ops.rms_norm import launch as rms_launch

    if not _launch.enabled():
        pytest.skip("the launch cache is off here (triton outside 3.6, $FLASHKERNELS_LAUNCH_CACHE=0 or hooks)")
    dev, dt = "cuda", torch.bfloat16

    def attention(d, dtype=dt):
        def run(seed):
            g = torch.Generator(device=dev).manual_seed(seed)
            q, k, v = (torch.randn(2, 1024, h, d, device=dev, dtype=dtype, generator=g).requires_grad_()
                       for h in (4, 2, 2))
            out = flashkernels.flash_attn_func(q, k, v, causal=True)
            out.backward(torch.randn(out.shape, device=dev, dtype=dtype, generator=g))
            return out.detach(), q.grad, k.grad, v.grad
        return run

    def norm(seed):
        g = torch.Generator(device=dev).manual_seed(seed)
        x = torch.randn(300, 4096, device=dev, dtype=dt, generator=g).requires_grad_()
        w = torch.randn(4096, device=dev, dtype=dt, generator=g).requires_grad_()
        y = flashkernels.rms_norm(x, w)
        y.backward(torch.randn(y.shape, device=dev, dtype=dt, generator=g))
        return y.detach(), x.grad, w.grad

    def mlp_rope(seed):
        g = torch.Generator(device=dev).manual_seed(seed)
        a, b = (torch.randn(256, 1000, device=dev, dtype=dt, generator=g).requires_grad_() for _ in range(2))
        y = flashkernels.swiglu(a, b)
        q, k = (torch.randn(2, h, 64, 128, device=dev, dtype=dt, generator=g).requires_grad_() for h in (8, 2))
        cos, sin = (torch.randn(64, 128, device=dev, dtype=dt, generator=g) for _ in range(2))
        qr, kr = flashkernels.apply_rotary_pos_emb(q, k, cos, sin)
        (y.float().sum() + qr.float().square().sum() + kr.float().sum()).backward()
        return y.detach(), a.grad, b.grad, qr.detach(), kr.detach(), q.grad, k.grad

    kernels = [att_launch.fwd_hopper.attn_fwd_hopper_kernel, att_launch.bwd_hopper.attn_bwd_hopper_kernel,
               att_launch.bwd_hopper256.attn_bwd_hopper256_kernel, att_launch.attn_fwd_kernel,
               rms_launch.rms_norm_fwd_kernel, rms_launch.rms_norm_bwd_kernel]
    sizes = lambda: [len(k.__dict__.get("_flashkernels_launches", {})) for k in kernels]
    # (fp32: the Triton forward, attn_fwd_kernel; every bf16 call here takes a Gluon one, D = 64's too since
    # its short build runs causal calls below 2048 rows)
    for name, run in [("attention d64", attention(64)), ("attention d128", attention(128)),
                      ("attention d256", attention(256)), ("attention d64 fp32", attention(64, torch.float32)),
                      ("rms_norm", norm), ("swiglu + rope", mlp_rope)]:
        first = run(1)
        torch.cuda.synchronize()
        seen = sizes()
        run(2)
        again = run(1)
        torch.cuda.synchronize()
        assert sizes() == seen, f"{name}: a repeat call missed the launch cache"
        for i, (a, b) in enumerate(zip(first, again)):
            if name.startswith("attention") and i == 1:  # dQ: atomic adds in no fixed order
                torch.testing.assert_close(b, a, atol=2e-2, rtol=2e-2, msg=f"{name} dq")
            else:
                assert torch.equal(a, b), f"{name}: output {i} differs on a cache hit"
    assert all(sizes()), f"some kernel was never cached: {sizes()}"
