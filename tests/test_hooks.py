"""vLLM's gate site read inside its activation-and-multiply op (hook kind 'act_and_mul'), on
stand-in modules shaped as vLLM's (a CustomOp's `forward` calls its `_forward_method`): the site
is chosen only where the op computes exactly act(gate) * up, the model's output stays bit for
bit, the counts are the reference's, and removing the hook gives the op its own forward back.
(tests/test_vllm_backend.py runs the same on vLLM's real modules.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from langneurons.kernels import reference
from langneurons.kernels.reference import Accumulator
from langneurons.profiler import hooks, vllm_sites
from langneurons.profiler.architectures import vllm_spec
from langneurons.store.schema import DEFAULT_EDGES, NEURON_VARS

D_FF, HIDDEN = 37, 16


class UnquantizedLinearMethod:  # vLLM's name for an unquantised linear's method (what sites checks)
    pass


class OtherMethod:
    pass


class ActAndMul(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self._forward_method = fn

    def forward(self, x):
        return self._forward_method(x)


class Down(nn.Linear):
    def __init__(self, method):
        super().__init__(D_FF, HIDDEN, bias=False)
        self.input_size_per_partition = D_FF
        self.quant_method = method()


class MLP(nn.Module):
    def __init__(self, fn, method):
        super().__init__()
        self.gate_up_proj = nn.Linear(HIDDEN, 2 * D_FF, bias=False)
        self.act_fn = ActAndMul(fn)
        self.down_proj = Down(method)

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class Block(nn.Module):
    def __init__(self, fn, method):
        super().__init__()
        self.mlp = MLP(fn, method)


class Model(nn.Module):
    def __init__(self, fn, method=UnquantizedLinearMethod, n_layers=2):
        super().__init__()
        torch.manual_seed(0)
        self.model = nn.Module()
        self.model.layers = nn.ModuleList(Block(fn, method) for _ in range(n_layers))

    def forward(self, x):
        return [b.mlp(x) for b in self.model.layers]


def silu_and_mul(x):  # vLLM's CPU forward
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


def gelu_and_mul(x):
    d = x.shape[-1] // 2
    return F.gelu(x[..., :d]) * x[..., d:]


def run(model, x, token_lang):
    points, d = vllm_sites.vllm_site_modules(model, vllm_spec("llama"), "gate", F.silu)
    acc = Accumulator.zeros(2, len(points), d, DEFAULT_EDGES, 0.0)
    state = hooks.HookState(acc, reference.accumulate_, compact=False)
    state.set_token_lang(token_lang)
    handles = hooks.install(points, state)
    try:
        out = model(x)
    finally:
        hooks.remove(handles)
    return points, acc, state, out


def expected(model, x, token_lang):
    acc = Accumulator.zeros(2, len(model.model.layers), D_FF, DEFAULT_EDGES, 0.0)
    for i, b in enumerate(model.model.layers):
        reference.accumulate_(acc, i, F.silu(b.mlp.gate_up_proj(x)[:, :D_FF]), token_lang)
    return acc


def test_gate_read_inside_the_op_counts_act_gate_once_and_leaves_the_output_and_op_as_they_were():
    model = Model(silu_and_mul)
    x = torch.randn(23, HIDDEN) * 3
    token_lang = torch.tensor([0, 1, -1] * 7 + [1, 0], dtype=torch.int32)
    own = [b.mlp.act_fn._forward_method for b in model.model.layers]
    plain = model(x)
    points, acc, state, out = run(model, x, token_lang)
    assert [p.kind for p in points] == ["act_and_mul", "act_and_mul"]
    assert [p.module for p in points] == [b.mlp.act_fn for b in model.model.layers]
    for a, b in zip(out, plain):
        assert torch.equal(a, b)                      # the model's computation, bit for bit
    want = expected(model, x, token_lang)
    for v in NEURON_VARS:
        assert torch.equal(getattr(acc, v), getattr(want, v)), v
    assert state.n_reduced == 2
    assert [b.mlp.act_fn._forward_method for b in model.model.layers] == own   # removed: its own forward


def test_inactive_hooks_compute_the_op_without_reducing():
    model = Model(silu_and_mul)
    x = torch.randn(5, HIDDEN)
    points, d = vllm_sites.vllm_site_modules(model, vllm_spec("llama"), "gate", F.silu)
    acc = Accumulator.zeros(1, 2, d, DEFAULT_EDGES, 0.0)
    state = hooks.HookState(acc, reference.accumulate_, compact=False)
    state.active = False
    with hooks.installed(points, state):
        out = model(x)
    assert state.n_reduced == 0 and int(acc.n_fired.sum()) == 0
    assert all(torch.equal(a, b) for a, b in zip(out, model(x)))


@pytest.mark.parametrize("fn,method", [(gelu_and_mul, UnquantizedLinearMethod), (silu_and_mul, OtherMethod)],
                         ids=["op computes another activation", "down projection quantised"])
def test_gate_is_recomputed_where_the_op_is_not_act_then_mul(fn, method):
    """An op whose result differs from act(gate) * up (a fused kernel's rounding; here another
    activation), or an op vLLM may bypass (fused with a quantised down projection), is left alone:
    the site is recomputed from the merged projection's output, with the same counts."""
    model = Model(fn, method)
    x = torch.randn(19, HIDDEN) * 3
    token_lang = torch.tensor([0, 1] * 9 + [-1], dtype=torch.int32)
    points, acc, state, _ = run(model, x, token_lang)
    assert [p.kind for p in points] == ["output", "output"]
    assert [p.module for p in points] == [b.mlp.gate_up_proj for b in model.model.layers]
    want = expected(model, x, token_lang)
    for v in NEURON_VARS:
        assert torch.equal(getattr(acc, v), getattr(want, v)), v


def test_an_op_shared_by_every_layer_is_left_alone():
    """vLLM's Gemma 3 gives all layers one activation op instance: inside it no layer could be told
    apart, so the gate site is recomputed from each layer's own merged projection."""
    model = Model(silu_and_mul)
    shared = model.model.layers[0].mlp.act_fn
    for b in model.model.layers:
        b.mlp.act_fn = shared
    x = torch.randn(11, HIDDEN)
    token_lang = torch.zeros(11, dtype=torch.int32)
    points, acc, _, _ = run(model, x, token_lang)
    assert [p.kind for p in points] == ["output", "output"]
    want = expected(model, x, token_lang)
    for v in NEURON_VARS:
        assert torch.equal(getattr(acc, v), getattr(want, v)), v
