"""--fused-mlp: each SiLU-gated MLP computes silu(gate) * up and its site's statistics in one pass.

A hook only sees a module's inputs and outputs, so the hooked reduction re-reads an activation the
MLP has just written. Fusing needs the MLP's own forward: for the duration of one profile() call,
each MLP's forward is shadowed by an instance attribute computing the same thing,
down_proj(fused(gate_proj(x), up_proj(x))), whose middle is one kernel (`kernels/triton_fused.py`
on CUDA, its torch twin elsewhere). Only MLPs known to compute exactly that are accepted
(`fusable_mlps`); the tests check that the shadowed forward gives totals bit-identical to the
hooks on every such architecture. The shadow is always removed in `finally`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn

from langneurons.profiler.architectures import ARCHITECTURES, ArchSpec, UnsupportedArchitecture, module_at
from langneurons.profiler.hooks import HookState


SILU_MODULES = ("SiLU", "SiLUActivation")  # torch's and transformers' SiLU modules


def fusable_mlps(model: nn.Module, spec: ArchSpec) -> list[nn.Module]:
    """Each layer's MLP, for --fused-mlp: only MLPs known to compute
    down_proj(silu(gate_proj(x)) * up_proj(x)), which the fused kernel reproduces exactly."""
    fusable = sorted(k for k, v in ARCHITECTURES.items() if v.fusable)
    if spec.moe is not None:
        raise UnsupportedArchitecture(f"--fused-mlp covers dense SiLU-gated MLPs ({', '.join(fusable)}), not the "
                                      f"experts of {spec.name}. Drop --fused-mlp: the hooks profile it.")
    if not spec.fusable:
        kind = f"a {spec.act_name.split(' (')[0]}-gated MLP" if spec.gated else "an ungated MLP"
        raise UnsupportedArchitecture(
            f"--fused-mlp supports SiLU-gated MLPs ({', '.join(fusable)}); {spec.name} has {kind}. "
            "Drop --fused-mlp: the hooks profile it."
        )
    mlps = [module_at(block, spec.mlp) for block in module_at(model, spec.layers)]
    for i, mlp in enumerate(mlps):
        act = type(getattr(mlp, spec.act, None)).__name__
        if act not in SILU_MODULES:
            raise UnsupportedArchitecture(
                f"--fused-mlp computes SiLU, but layer {i}'s activation is {act} "
                "(config.hidden_act); drop --fused-mlp: the hooks profile any activation."
            )
    return mlps


@contextmanager
def installed(mlps: list[nn.Module], state: HookState) -> Iterator[HookState]:
    if state.fuse is None:
        raise RuntimeError("fused.installed needs a HookState built with fuse=dispatch.get_fused(...)")
    try:
        for layer, mlp in enumerate(mlps):
            def forward(x, mlp=mlp, layer=layer):
                return mlp.down_proj(state.fused(layer, mlp.gate_proj(x), mlp.up_proj(x), mlp.act_fn))
            mlp.forward = forward  # nn.Module.__call__ looks forward up on the instance first
        yield state
    finally:
        for mlp in mlps:
            mlp.__dict__.pop("forward", None)
