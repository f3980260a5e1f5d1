"""Steering inside vLLM's worker processes (via `LLM.apply_model`; functions here are pickled by
reference). Each tensor-parallel rank holds neurons [rank*d, (rank+1)*d) of every layer (d: its
slice of d_ff) and applies the operations on its own slice, with the same `hooks.apply` as the
HF backend, at every forward pass: the prompt's prefill and every decode step (the engine runs
eager, so no compiled graph or captured CUDA graph skips a hook; prefix caching is off, so no
step reuses keys computed under another condition).

Where: the down projection's input, on the neurons listed. `down_in` is that input itself. `gate`
is act(gate), which vLLM's fused activation-and-multiply never hands out (Gemma 3 even shares one
such op between its layers): the merged projection's output [gate | up] of the listed neurons is
kept by a forward hook, and the down projection's input at those neurons becomes
(scale * act(gate) + shift) * up, act being the model config's activation, as transformers
computes it; every other neuron is left as vLLM computed it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from langneurons.profiler import architectures, vllm_sites
from langneurons.steering.hooks import LayerOps, apply


@dataclass(frozen=True, slots=True)
class RankSteering:
    """What one rank installed (`install`'s report)."""

    d_local: int          # its slice of d_ff
    offset: int           # the model index of its first neuron
    n_ops: int            # operations on its slice
    layers: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RankApplied:
    """`stop`'s report: forward passes run and layer hooks that applied their operations."""

    passes: int
    n_applied: int
    n_layers: int


@dataclass
class _Steering:
    layers: tuple[int, ...]
    passes: int = 0
    n_applied: int = 0
    handles: list = field(default_factory=list)


def _rank() -> int:
    from vllm.distributed import get_tensor_model_parallel_rank

    return get_tensor_model_parallel_rank()


def install(model: nn.Module, model_type: str, site: str, act: str | None, ops: dict[int, LayerOps]) -> RankSteering:
    """Install this rank's share of `ops` (`hooks.layer_ops`: model neuron indices, on the host)."""
    from transformers.activations import ACT2FN

    uninstall(model)
    spec = architectures.vllm_spec(model_type)
    dense, d_local = vllm_sites.vllm_dense_mlps(model, spec)
    mlps = dict(dense)
    missing = sorted(set(ops) - set(mlps))
    if missing:
        raise ValueError(f"layer {missing[0]} has no dense FFN in this vLLM {model_type} model")
    if site == "gate" and act is None:
        raise ValueError("the model config names no MLP activation (hidden_act): steer the gate site with --backend hf")
    fn = ACT2FN[act] if act else None
    offset = _rank() * d_local
    p = next(model.parameters())
    state = _Steering(tuple(sorted(ops)))
    n_ops = 0

    def count_pass(_m, _args):
        state.passes += 1

    state.handles.append(model.register_forward_pre_hook(count_pass))
    for layer in state.layers:
        whole = ops[layer]
        mine = (whole.neuron >= offset) & (whole.neuron < offset + d_local)
        o = LayerOps(whole.neuron[mine] - offset, whole.scale[mine], whole.shift[mine]).to(p.device, p.dtype)
        n_ops += int(mine.sum())
        mlp = mlps[layer]
        down = architectures.module_at(mlp, spec.down)
        if site == "down_in":
            def pre(_m, args, o=o):
                state.n_applied += 1
                return (apply(args[0], o), *args[1:])
        else:
            kept: dict[str, torch.Tensor] = {}

            def keep(_m, _args, out, o=o, kept=kept):
                y = out[0] if isinstance(out, tuple) else out        # vLLM linears return (y, bias)
                y = y.reshape(-1, y.shape[-1])
                kept["gate"], kept["up"] = y.index_select(-1, o.neuron), y.index_select(-1, o.neuron + d_local)

            def pre(_m, args, o=o, kept=kept):
                state.n_applied += 1
                x = args[0].contiguous()                             # a view below, whatever came in
                gate, up = kept.pop("gate"), kept.pop("up")
                x.view(-1, x.shape[-1]).index_copy_(-1, o.neuron, torch.addcmul(o.shift, fn(gate), o.scale) * up)
                return (x, *args[1:])

            state.handles.append(architectures.module_at(mlp, vllm_sites.vllm_gate_up(spec)).register_forward_hook(keep))
        state.handles.append(down.register_forward_pre_hook(pre))
    model._langneurons_steering = state
    return RankSteering(d_local, offset, n_ops, state.layers)


def applied(model: nn.Module) -> RankApplied:
    state = model._langneurons_steering
    return RankApplied(state.passes, state.n_applied, len(state.layers))


def uninstall(model: nn.Module) -> None:
    state = getattr(model, "_langneurons_steering", None)
    if state is not None:
        for h in state.handles:
            h.remove()
        model._langneurons_steering = None
