"""Attention forward and backward captured in CUDA graphs and replayed (GPU only).

Serving and training loops capture whole steps in CUDA graphs (``torch.cuda.graph``) and replay
them on new values copied into the same input tensors, often with several graphs alive and
replayed in turn. Here: a causal and a non-causal forward + backward captured as two graphs,
replayed alternately on fresh inputs; each replay's out, dk, dv equal the eager call's bit for bit
and dq agrees to its fp32 accumulation order (the dQ reduce-adds' order is not fixed).
"""
import pytest
import torch

import flashkernels
from flashkernels.ops.attention import launch


def _capture(q, k, v, dout, causal, stream):
    """A graph of out = flash_attn_func(q, k, v, causal) and its gradients for dout, and the
    static tensors it writes (out, dq, dk, dv)."""
    static = {}
    for _ in range(2):  # (warm-up on the capture stream: compiles and the autograd engine's state)
        out = flashkernels.flash_attn_func(q, k, v, causal=causal)
        torch.autograd.grad(out, (q, k, v), dout)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        static["out"] = flashkernels.flash_attn_func(q, k, v, causal=causal)
        static["dq"], static["dk"], static["dv"] = torch.autograd.grad(static["out"], (q, k, v), dout)
    return graph, static


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("D", [64, 128], ids=lambda d: f"d{d}")
def test_attention_graphs_replay_alternately_cuda(D):
    """Two graphs (causal, non-causal; B = 2, S = 1024, 8 heads, bf16) replayed A, B, B, A on new
    inputs each time: every replay computes what the eager call computes on the same values (on an
    H100 through the Gluon backward, whose launches the capture counts)."""
    torch.manual_seed(0)
    B, S, H = 2, 1024, 8
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    dout = torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graphs = {}
    with torch.cuda.stream(stream):
        n_bwd = launch.hopper_bwd_launches
        for causal in (True, False):
            graphs[causal] = _capture(q, k, v, dout, causal, stream)
        if launch.hopper_fwd_device_reason(q.device) is None:  # (an H100: 2 warm-ups + the capture, each
            assert launch.hopper_bwd_launches == n_bwd + 6      # causal setting, in the Gluon backward)
    torch.cuda.current_stream().wait_stream(stream)
    for causal in (True, False, False, True):
        with torch.no_grad():
            for t in (q, k, v, dout):
                t.copy_(torch.randn_like(t))
        graph, static = graphs[causal]
        graph.replay()
        torch.cuda.synchronize()
        qe, ke, ve = (t.detach().clone().requires_grad_() for t in (q, k, v))
        out = flashkernels.flash_attn_func(qe, ke, ve, causal=causal)
        dq, dk, dv = torch.autograd.grad(out, (qe, ke, ve), dout)
        assert torch.equal(static["out"], out), f"causal={causal}: out"
        assert torch.equal(static["dk"], dk) and torch.equal(static["dv"], dv), f"causal={causal}: dk, dv"
        torch.testing.assert_close(static["dq"], dq, rtol=2 ** -7, atol=2 ** -7 * dq.abs().max().item())
