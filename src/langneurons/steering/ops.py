"""The custom ops through which the vLLM steering hooks change the down projection's input, in
eager engines and inside vLLM's compiled graph alike (`steering/vllm_worker.py`).

A hook traced by torch.compile runs its Python once, at tracing: the operations of the condition
being steered then would be frozen into the graph, and every later condition would run the first
one's. So a hook calls one of these ops, which the compiler keeps as an opaque node; their
implementation runs on every forward and reads the rank's operations from static device buffers
(`vllm_worker.Steering`: one row per layer, written in place between conditions). They launch
plain torch ops on those buffers, never sync with the host and never take a data-dependent shape:
on a GPU they can be captured in a CUDA graph, which then replays the buffers' current contents.

The state lives in the slot table the profiling op uses (`profiler/ops.py`): the graph holds only
integer constants. Both ops return a new tensor (an op may not return its input's storage).
"""

from __future__ import annotations

import torch

from langneurons.profiler.ops import state_at


@torch.library.custom_op("langneurons::steer_down_in", mutates_args=())
def steer_down_in(x: torch.Tensor, slot: int, row: int) -> torch.Tensor:
    """x (the down projection's input) with row `row`'s operations applied."""
    return state_at(slot).down_in(row, x)


@steer_down_in.register_fake
def _(x: torch.Tensor, slot: int, row: int) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("langneurons::steer_gate", mutates_args=())
def steer_gate(x: torch.Tensor, gate_up: torch.Tensor, slot: int, row: int) -> torch.Tensor:
    """x (act(gate) * up, the down projection's input) with act(gate) of row `row`'s neurons
    mapped, from the merged projection's output `gate_up` = [gate | up]."""
    return state_at(slot).gate(row, x, gate_up)


@steer_gate.register_fake
def _(x: torch.Tensor, gate_up: torch.Tensor, slot: int, row: int) -> torch.Tensor:
    return torch.empty_like(x)
