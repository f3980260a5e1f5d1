"""The custom op through which hooks reduce inside a compiled graph (vLLM's default engine,
`--compile` on the HF backend).

torch.compile traces hooks registered before it compiles, but a hook that calls the reduction
kernel directly would break the graph (numba and Triton launches are not traceable) and its Python
(`if state.active`, counters) would run once, at tracing, never again. So a hook calls
`torch.ops.langneurons.reduce_site(x, slot, layer)` instead: an opaque node the compiler keeps in
place (declared side-effecting, so it is never eliminated although it returns nothing), whose
implementation runs on every forward and adds `x` into the accumulator of hook state `slot`.

The accumulators are mutated in place and never reallocated, the implementation never syncs with
the host, and the token languages it reads come from the state (a static device buffer on the
vLLM path, filled before each step): on a GPU the launches it makes can be captured in a CUDA
graph and replayed. The state lives in this process's slot table, not in the graph: a slot is an
integer constant the graph can hold.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from langneurons.profiler.hooks import HookState

_SLOTS: dict[int, object] = {}
_NEXT = itertools.count()


def register(state: HookState) -> int:
    """Give `state` a slot (this process only); hooks then call the op with it. Any state with a
    `slot` attribute may take one: the steering ops (`steering/ops.py`) share this table."""
    slot = next(_NEXT)
    _SLOTS[slot] = state
    state.slot = slot
    return slot


def release(state: HookState) -> None:
    if state.slot is not None:
        _SLOTS.pop(state.slot, None)
        state.slot = None


def state_at(slot: int):
    """The state a graph's op call names. A graph that outlived its state must fail loudly: counting
    into nothing would lose counts, steering with nothing would generate unsteered tokens."""
    state = _SLOTS.get(slot)
    if state is None:
        raise RuntimeError(f"langneurons: a compiled graph called its op with slot {slot}, which was released; "
                           "start a new backend")
    return state


@torch.library.custom_op("langneurons::reduce_site", mutates_args=())
def reduce_site(x: torch.Tensor, slot: int, layer: int) -> None:
    state_at(slot).reduce(layer, x)


@reduce_site.register_fake
def _(x: torch.Tensor, slot: int, layer: int) -> None:
    return None


# nothing uses the op's (empty) result: without this, dead-code elimination would drop it
torch.fx.node.has_side_effect(torch.ops.langneurons.reduce_site.default)
