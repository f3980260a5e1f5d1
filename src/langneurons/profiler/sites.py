"""The hook point of each layer's FFN site in a transformers model, and the model facts read from the
same modules (layers, d_ff). The table they follow is `architectures`; vLLM's hook points are
`vllm_sites`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from langneurons.profiler.architectures import ArchSpec, UnsupportedArchitecture, check_site, module_at


@dataclass(frozen=True)
class SiteModule:
    """One layer's hook point: hook `module`'s output (kind='output') or its input ('input');
    `transform`, if set, turns what the hook sees into the site's activations.

    kind='act_and_mul' (vLLM's gate site where the model computes act(gate) with torch): `module`
    is vLLM's activation-and-multiply op, whose forward is act(x[..., :d]) * x[..., d:] with
    `transform` as act; the hook runs that same computation itself and reduces act(x[..., :d])
    on the way (hooks.py), so act(gate) is computed once, as the model computes it."""

    layer: int
    module: nn.Module
    kind: str
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None


def site_modules(model: nn.Module, spec: ArchSpec, site: str) -> list[SiteModule]:
    """The module to hook for `site` in every layer, in layer order."""
    check_site(site)
    blocks = module_at(model, spec.layers)
    out = []
    for i, block in enumerate(blocks):
        mlp = dense_ffn(spec, module_at(block, spec.mlp))
        if mlp is None:  # a sparse layer without a shared expert: only profiler/moe.py counts it
            continue
        if site == "down_in" and spec.gated:
            out.append(SiteModule(i, module_at(mlp, spec.down), "input"))
        else:  # gate, or down_in of a plain MLP, which is the same tensor (dropout is off in eval)
            out.append(SiteModule(i, module_at(mlp, spec.act), "output"))
    check_distinct(out, spec, site)
    return out


def dense_ffn(spec: ArchSpec, mlp: nn.Module) -> nn.Module | None:
    """The dense FFN whose neurons the neuron variables count: the MLP of a dense model or layer,
    a sparse block's shared expert, or None (a sparse block without one)."""
    if spec.moe is None or not hasattr(mlp, spec.moe.router):
        return mlp
    return getattr(mlp, spec.moe.shared) if spec.moe.shared else None



def check_distinct(out: list[SiteModule], spec: ArchSpec, site: str) -> None:
    if len({id(s.module) for s in out}) != len(out):
        raise RuntimeError(f"{spec.name}: layers share one {site} module, so hooks could not tell "
                           "layers apart; this model build is not supported")



def ffn_width(model: nn.Module, spec: ArchSpec) -> int:
    """d_ff of the neuron variables, read from the dense FFNs' down projections (Linear or GPT-2's
    Conv1D); 0 for a MoE model without a dense FFN."""
    widths = {}
    for i, block in enumerate(module_at(model, spec.layers)):
        mlp = dense_ffn(spec, module_at(block, spec.mlp))
        if mlp is not None:
            down = module_at(mlp, spec.down)
            # transformers Conv1D stores weight as [in, out]
            widths[i] = down.in_features if isinstance(down, nn.Linear) else int(down.weight.shape[0])
    if len(set(widths.values())) > 1:
        raise UnsupportedArchitecture(f"{spec.name}: the dense FFNs differ in width ({widths}: layer -> d_ff, "
                                      "dense layers vs shared experts); one store holds one d_ff")
    return next(iter(widths.values()), 0)


def num_layers(model: nn.Module, spec: ArchSpec) -> int:
    return len(module_at(model, spec.layers))
