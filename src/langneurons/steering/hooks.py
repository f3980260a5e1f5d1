"""The interventions inside a transformers model: at the profiled site of each listed layer, every
forward pass (the prompt's, and each decoded token's, whose keys the KV cache then holds steered)
applies x[..., neuron] := scale * x[..., neuron] + shift to the listed neurons.

Routing (`--experts`): the same map on a sparse layer's router logits, before its softmax and
top-k. transformers' routers compute their logits inside their forward (F.linear of the hidden
states and the router's weight) and return the top-k already chosen, so no module hook can reach
the logits. While steering, the router's forward runs inside a torch function mode that shifts
the output of that one F.linear call (checked to happen exactly once per call); the router's
own selection rule then runs on the shifted logits.

`apply_reference` is the spec: one neuron at a time, in float64. The hooks compute the same thing
in the model's dtype with two indexed ops per layer.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from langneurons.profiler import sites
from langneurons.profiler.architectures import ArchSpec


@dataclass(frozen=True, slots=True)
class LayerOps:
    """One layer's operations: x[..., neuron[k]] := scale[k] * x[..., neuron[k]] + shift[k]."""

    neuron: torch.Tensor   # [K] int64, distinct
    scale: torch.Tensor    # [K]
    shift: torch.Tensor    # [K]

    def to(self, device: torch.device, dtype: torch.dtype) -> LayerOps:
        return LayerOps(self.neuron.to(device), self.scale.to(device, dtype), self.shift.to(device, dtype))


def layer_ops(table: pd.DataFrame) -> dict[int, LayerOps]:
    """One condition's operations (`neurons.operations`' table) per layer."""
    out = {}
    for layer, g in table.groupby("layer", sort=True):
        if g["neuron"].duplicated().any():
            raise ValueError(f"layer {layer}: a neuron has two operations; each neuron gets one")
        out[int(layer)] = LayerOps(torch.tensor(g["neuron"].to_numpy(np.int64)),
                                   torch.tensor(g["scale"].to_numpy(np.float64)),
                                   torch.tensor(g["shift"].to_numpy(np.float64)))
    return out


def apply(x: torch.Tensor, ops: LayerOps) -> torch.Tensor:
    """The operations on the last axis of x, in place (x is the site's fresh activation tensor)."""
    x.index_copy_(-1, ops.neuron, torch.addcmul(ops.shift, x.index_select(-1, ops.neuron), ops.scale))
    return x


def apply_reference(x: torch.Tensor, ops: LayerOps) -> torch.Tensor:
    """The spec of `apply`: a copy of x with each listed neuron's values mapped, in float64."""
    y = x.double().clone()
    for n, a, b in zip(ops.neuron.tolist(), ops.scale.tolist(), ops.shift.tolist()):
        y[..., n] = a * y[..., n] + b
    return y.to(x.dtype)


class _ShiftedLogits(TorchFunctionMode):
    """Applies `ops` to the output of F.linear(x, weight[, bias]) for this one `weight`."""

    def __init__(self, weight: torch.Tensor, ops: LayerOps):
        super().__init__()
        self.weight, self.ops, self.hits = weight, ops, 0   # ops: on the weight's device, in its dtype

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is F.linear and len(args) > 1 and args[1] is self.weight:
            self.hits += 1
            out = apply(out, self.ops)
        return out


def _routed(router: torch.nn.Module, layer: int, ops: LayerOps):
    """Shadow `router.forward` (an instance attribute, deleted to restore it) with one whose logits
    take `ops`."""
    forward = router.forward
    weight = getattr(router, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"layer {layer}: this router has no weight of its own, so --experts cannot shift its logits")
    ops = ops.to(weight.device, weight.dtype)  # F.linear's logits come in the weight's dtype

    def shifted(*args, **kwargs):
        with _ShiftedLogits(weight, ops) as mode:
            out = forward(*args, **kwargs)
        if mode.hits != 1:
            raise RuntimeError(f"layer {layer}: the router computed F.linear on its weight {mode.hits} times, not "
                               "once: --experts cannot tell its logits; please report the model")
        return out

    router.forward = shifted
    return lambda: delattr(router, "forward")


@contextmanager
def steered(model: torch.nn.Module, spec: ArchSpec, site: str, ops: dict[int, LayerOps],
            routing: dict[int, LayerOps] | None = None) -> Iterator[None]:
    """Apply `ops` (layer -> LayerOps) at `site`, and `routing` (layer -> LayerOps over experts) on
    the routers' logits, on every forward pass inside the block; all is undone in `finally`. A
    layer the model has no site or router for is refused."""
    from langneurons.profiler.moe_layout import sparse_blocks

    p = next(model.parameters())
    routers = {i: getattr(b, spec.moe.router) for i, b in sparse_blocks(model, spec)} if spec.moe else {}
    unrouted = sorted(set(routing or {}) - set(routers))
    if unrouted:
        raise ValueError(f"layer {unrouted[0]} has no router in this {spec.name} model (routing layers: {sorted(routers)})")
    modules = {s.layer: s for s in sites.site_modules(model, spec, site)}
    missing = sorted(set(ops) - set(modules))
    if missing:
        raise ValueError(f"layer {missing[0]} has no dense FFN {site} site in this {spec.name} model "
                         f"(layers with one: {sorted(modules)})")
    handles, undo = [], []
    try:
        for layer, o in (routing or {}).items():
            undo.append(_routed(routers[layer], layer, o))
        for layer, o in ops.items():
            s, o = modules[layer], o.to(p.device, p.dtype)
            if s.kind == "output":
                handles.append(s.module.register_forward_hook(lambda _m, _a, out, o=o: apply(out, o)))
            else:
                handles.append(s.module.register_forward_pre_hook(
                    lambda _m, args, o=o: (apply(args[0], o), *args[1:])))
        yield
    finally:
        for h in handles:
            h.remove()
        for u in undo:
            u()
