"""Steering inside vLLM's worker processes. Each tensor-parallel rank holds neurons
[rank*d, (rank+1)*d) of every layer (d: its slice of d_ff) and applies the operations on its own
slice, at every forward pass: the prompt's prefill and every decode step (prefix caching is off,
so no step reuses keys computed under another condition).

Hooks are installed once per engine, on every dense layer: by vLLM's model loader before vLLM
compiles the model (`profiler/backends/vllm_plugin.py`, `compiled=True`), or by `apply_model` into
an eager engine. They call the custom ops of `steering/ops.py`, which read this rank's operations
from static device buffers (`Steering`); `set_operations` writes one condition's operations into
them in place, and `clear` puts back the identity (the unsteered model the fluency score uses).
Nothing a compiled graph or a captured CUDA graph would have frozen changes between conditions.

Where: the down projection's input, on the neurons listed. `down_in` is that input itself:
x := scale * x + shift. `gate` is act(gate), which vLLM's fused activation-and-multiply never
hands out (Gemma 3 even shares one such op between its layers): the merged projection's output
[gate | up] is kept by a forward hook, and the down projection's input at the listed neurons
becomes (scale * act(gate) + shift) * up, act being the model config's activation, as
transformers computes it. Every other neuron is left as vLLM computed it (`torch.where` on a
per-layer mask, so the shapes never depend on the condition). The listed neurons' values are
computed as `hooks.apply` computes them on the HF backend, elementwise in the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from langneurons.profiler import architectures, ops, vllm_sites
from langneurons.profiler.backends.vllm_plugin import hooks_missing
from langneurons.steering import ops as steer_ops  # noqa: F401  (registers torch.ops.langneurons.steer_*)
from langneurons.steering.hooks import LayerOps


@dataclass(frozen=True, slots=True)
class RankSteering:
    """What one rank installed (`install`'s report)."""

    d_local: int              # its slice of d_ff
    offset: int               # the model index of its first neuron
    layers: tuple[int, ...]   # the hooked layers: every one with a dense FFN
    site: str
    compiled: bool


@dataclass(frozen=True, slots=True)
class RankApplied:
    """`applied`'s report since the last `set_operations`: forward passes run and layer hooks that
    applied their operations (every hooked layer, each pass, or a pass bypassed one)."""

    passes: int
    n_applied: int
    n_layers: int


class Steering:
    """One rank's steering state: the hooked layers' operations as dense rows (row r: layer
    layers[r]; identity where mask is False) and the counters `applied` reports, all on the
    device. The ops of `steering/ops.py` call `down_in` and `gate`."""

    def __init__(self, layers: tuple[int, ...], site: str, d_local: int, offset: int, act, compiled: bool,
                 device: torch.device, dtype: torch.dtype):
        self.layers, self.site, self.d_local, self.offset, self.act = layers, site, d_local, offset, act
        self.compiled = compiled
        self.row = {layer: r for r, layer in enumerate(layers)}
        shape = (len(layers), d_local)
        self.mask = torch.zeros(shape, dtype=torch.bool, device=device)
        self.scale = torch.ones(shape, dtype=dtype, device=device)
        self.shift = torch.zeros(shape, dtype=dtype, device=device)
        self.passes = torch.zeros(1, dtype=torch.int64, device=device)
        self.applied = torch.zeros(1, dtype=torch.int64, device=device)
        self.slot: int | None = None
        self.handles: list = []

    def down_in(self, row: int, x: torch.Tensor) -> torch.Tensor:
        self.applied += 1   # on the device, so a replayed CUDA graph counts too
        return torch.where(self.mask[row], torch.addcmul(self.shift[row], x, self.scale[row]), x)

    def gate(self, row: int, x: torch.Tensor, gate_up: torch.Tensor) -> torch.Tensor:
        self.applied += 1
        y = gate_up.reshape(-1, gate_up.shape[-1])
        gate, up = y[:, : self.d_local].contiguous(), y[:, self.d_local:]
        steered = torch.addcmul(self.shift[row], self.act(gate), self.scale[row]) * up
        return torch.where(self.mask[row], steered, x.reshape(-1, self.d_local)).reshape(x.shape)

    def set_operations(self, layer_ops: dict[int, LayerOps]) -> int:
        """Write one condition's operations (model neuron indices, on the host) into the rows, in
        place; the counters restart. Returns how many fall in this rank's slice."""
        missing = sorted(set(layer_ops) - set(self.row))
        if missing:
            raise ValueError(f"layer {missing[0]} has no dense FFN in this vLLM model (layers with one: "
                             f"{list(self.layers)})")
        self.clear()
        n = 0
        for layer, whole in layer_ops.items():
            mine = (whole.neuron >= self.offset) & (whole.neuron < self.offset + self.d_local)
            o = LayerOps(whole.neuron[mine] - self.offset, whole.scale[mine], whole.shift[mine]).to(
                self.mask.device, self.scale.dtype)
            r = self.row[layer]
            self.mask[r, o.neuron] = True
            self.scale[r, o.neuron] = o.scale
            self.shift[r, o.neuron] = o.shift
            n += int(mine.sum())
        return n

    def clear(self) -> None:
        """The identity on every row (the unsteered model); the counters restart."""
        self.mask.zero_()
        self.scale.fill_(1)
        self.shift.zero_()
        self.passes.zero_()
        self.applied.zero_()


def _rank() -> int:
    from vllm.distributed import get_tensor_model_parallel_rank

    return get_tensor_model_parallel_rank()


def check_site(site: str, act: str | None) -> None:
    """What a rank can steer; checked before an engine starts too (inside vLLM's loader an error
    would surface only as the engine failing to start)."""
    if site not in ("gate", "down_in"):
        raise ValueError(f"the vLLM backend steers the gate or down_in site, not {site!r}")
    if site == "gate" and act is None:
        raise ValueError("the model config names no MLP activation (hidden_act): steer the gate site with --backend hf")


def install(model: nn.Module, model_type: str, site: str, act: str | None, compiled: bool = False) -> RankSteering:
    """Install this rank's steering hooks on every dense layer, steering nothing until
    `set_operations`. `compiled`: called while the model loads, before vLLM compiles it
    (`vllm_plugin`); the hooks then stay for the engine's lifetime."""
    from transformers.activations import ACT2FN

    old = getattr(model, "_langneurons_steering", None)
    if old is not None:
        if old.compiled:
            raise RuntimeError("this vLLM engine was compiled with langneurons' steering hooks; they cannot be "
                               "reinstalled (start a new generator for another site)")
        _uninstall(model)
    check_site(site, act)
    spec = architectures.vllm_spec(model_type)
    dense, d_local = vllm_sites.vllm_dense_mlps(model, spec)
    if not dense:
        raise ValueError(f"this vLLM {model_type} model has no dense FFN layer to steer")
    p = next(model.parameters())
    state = Steering(tuple(i for i, _ in dense), site, d_local, _rank() * d_local, ACT2FN[act] if act else None,
                     compiled, p.device, p.dtype)
    slot = ops.register(state)

    def count_pass(_m, _args):
        state.passes += 1   # on the device: no host sync per step

    state.handles.append(model.register_forward_pre_hook(count_pass))
    for row, (_, mlp) in enumerate(dense):
        down = architectures.module_at(mlp, spec.down)
        if site == "down_in":
            def pre(_m, args, row=row):
                return (torch.ops.langneurons.steer_down_in(args[0], slot, row), *args[1:])
        else:
            kept: dict[str, torch.Tensor] = {}

            def keep(_m, _args, out, kept=kept):
                kept["gate_up"] = out[0] if isinstance(out, tuple) else out   # vLLM linears return (y, bias)

            def pre(_m, args, row=row, kept=kept):
                return (torch.ops.langneurons.steer_gate(args[0], kept.pop("gate_up"), slot, row), *args[1:])

            gate_up = architectures.module_at(mlp, vllm_sites.vllm_gate_up(spec))
            state.handles.append(gate_up.register_forward_hook(keep))
        state.handles.append(down.register_forward_pre_hook(pre))
    model._langneurons_steering = state
    return installed(model)


def _state(model: nn.Module) -> Steering:
    state = getattr(model, "_langneurons_steering", None)
    if state is None:
        raise hooks_missing("steering hooks")
    return state


def installed(model: nn.Module) -> RankSteering:
    s = _state(model)
    return RankSteering(s.d_local, s.offset, s.layers, s.site, s.compiled)


def set_operations(model: nn.Module, layer_ops: dict[int, LayerOps]) -> int:
    """One condition's operations (`hooks.layer_ops`) on this rank; how many fall in its slice."""
    return _state(model).set_operations(layer_ops)


def applied(model: nn.Module) -> RankApplied:
    s = _state(model)
    return RankApplied(int(s.passes.item()), int(s.applied.item()), len(s.layers))


def clear(model: nn.Module) -> None:
    _state(model).clear()


def _uninstall(model: nn.Module) -> None:
    state = model._langneurons_steering
    for h in state.handles:
        h.remove()
    ops.release(state)
    model._langneurons_steering = None
