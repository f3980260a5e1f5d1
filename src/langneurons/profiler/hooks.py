"""Hooks that reduce each layer's FFN site on the device, inside the forward pass: one hook state
and one installer for both backends (the HF backend's model, and vLLM's model inside each of its
worker processes, `backends/vllm_worker.py`).

The hook never keeps a reference to the activation (fused or in-place kernels may overwrite it
later, nnsight #630); it reduces it at once into the accumulator and returns nothing, so the
model's own computation is untouched. No host sync happens here. One hook point is not a torch
hook: vLLM's activation-and-multiply op (kind 'act_and_mul', vllm_sites.py) runs its own computation,
act(x[..., :d]) * x[..., d:], from the hook, which reduces act(gate) in between: same ops, same
result (checked bit for bit when the site is chosen), and act(gate) computed once instead of twice.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from langneurons.kernels.dispatch import AccumulateFn, FusedFn
from langneurons.kernels.reference import Accumulator
from langneurons.profiler import ops  # noqa: F401  (registers torch.ops.langneurons.reduce_site)
from langneurons.profiler.sites import SiteModule


class HookState:
    """What the hooks need for the current forward pass: which language each token belongs to.

    With `compact`, the hook first gathers the counted rows (indices prepared on the host before
    the forward, so gathering needs no sync) and reduces only those: padding and special tokens
    cost nothing. That suits the torch reference; a fused kernel reads the block once with the
    mask instead, which moves fewer bytes than gathering first.
    """

    def __init__(self, acc: Accumulator, accumulate: AccumulateFn, *, compact: bool,
                 fuse: FusedFn | None = None, site: str = "gate"):
        self.acc = acc
        self.accumulate = accumulate
        self.compact = compact
        self.fuse = fuse    # --fused-mlp: the fused gated-MLP function (profiler/fused.py)
        self.site = site
        self.token_lang: torch.Tensor | None = None  # [B*S] int32, -1 = not counted
        self.rows: torch.Tensor | None = None        # [R] int64: counted rows (compact only)
        self.row_lang: torch.Tensor | None = None    # [R] int32: their languages
        self.active = True  # hooks that stay installed between passes (vLLM) reduce only while set
        self.n_reduced = 0  # blocks reduced: the vLLM worker checks every site ran in every pass
        # compiled graphs (profiler/ops.py): hooks reduce through the custom op, for this slot; what
        # must change per step lives on the device: `gate` (1 while counting, else 0) and the
        # `reduced` counter replace `active` and `n_reduced`, whose Python runs only at tracing
        self.slot: int | None = None
        self.gate: torch.Tensor | None = None
        self.reduced: torch.Tensor | None = None

    def set_batch(self, token_lang: torch.Tensor, device: torch.device) -> None:
        """Prepare the next forward pass; `token_lang` is [B*S] on the host."""
        self.token_lang = token_lang.to(device, non_blocking=True)
        if self.compact:
            rows = torch.nonzero(token_lang >= 0).squeeze(1)
            self.rows = rows.to(device, non_blocking=True)
            self.row_lang = token_lang[rows].to(device, non_blocking=True)

    def set_token_lang(self, token_lang: torch.Tensor) -> None:
        """Set the pass's token languages, already on the device (vLLM builds them there)."""
        if self.compact:
            raise RuntimeError("internal: compact hooks need set_batch (host-side row indices)")
        self.token_lang = token_lang

    def clear(self) -> None:
        self.token_lang = self.rows = self.row_lang = None

    def check_batch(self) -> None:
        if self.token_lang is None:
            raise RuntimeError("a hooked forward ran without token_lang set: call backend.profile()")

    def fused(self, layer: int, gate: torch.Tensor, up: torch.Tensor, act) -> torch.Tensor:
        """act(gate) * up for one layer's MLP, reducing the site on the way (--fused-mlp)."""
        self.check_batch()
        return self.fuse(self.acc, layer, gate, up, self.token_lang, self.site, act)

    def reduce(self, layer: int, x: torch.Tensor) -> None:
        self.check_batch()
        if self.reduced is None:
            self.n_reduced += 1
        else:
            self.reduced += self.gate
        x = x.reshape(-1, x.shape[-1])
        if self.compact:
            self.accumulate(self.acc, layer, x.index_select(0, self.rows), self.row_lang)
        else:  # a static buffer (vLLM) may be longer than this step: its first rows are the step's
            self.accumulate(self.acc, layer, x, self.token_lang[: x.shape[0]])

    def observe(self, layer: int, x: torch.Tensor) -> None:
        """What every hook calls with its layer's site block: through the custom op once the state
        has a slot (a compiled graph keeps the op, and runs it on every forward), else directly."""
        if self.slot is not None:
            torch.ops.langneurons.reduce_site(x, self.slot, layer)
        elif self.active:
            self.reduce(layer, x)


def install(sites: list[SiteModule], state: HookState) -> list:
    """One hook per layer; returns the handles (remove them to uninstall)."""
    handles = []
    try:
        for s in sites:
            if s.kind == "output":
                def hook(_m, _args, output, layer=s.layer, f=s.transform):
                    state.observe(layer, output if f is None else f(output))
                handles.append(s.module.register_forward_hook(hook))
            elif s.kind == "act_and_mul":
                handles.append(_ActAndMul(s, state))
            else:
                def pre_hook(_m, args, layer=s.layer, f=s.transform):
                    state.observe(layer, args[0] if f is None else f(args[0]))
                handles.append(s.module.register_forward_pre_hook(pre_hook))
    except BaseException:
        remove(handles)
        raise
    return handles


class _ActAndMul:
    """Runs a vLLM activation-and-multiply op's forward (`_forward_method`, which its `forward`
    calls) as act(x[..., :d]) * x[..., d:], reducing act(gate) while profiling; `remove` puts the
    op's own forward back."""

    def __init__(self, site: SiteModule, state: HookState):
        self.module, self.own = site.module, site.module._forward_method
        act, layer = site.transform, site.layer

        def forward(x: torch.Tensor) -> torch.Tensor:
            d = x.shape[-1] // 2
            h = act(x[..., :d])
            state.observe(layer, h)
            return h * x[..., d:]

        self.module._forward_method = forward

    def remove(self) -> None:
        self.module._forward_method = self.own


def remove(handles: list) -> None:
    for h in handles:
        h.remove()
    handles.clear()


@contextmanager
def installed(sites: list[SiteModule], state: HookState) -> Iterator[HookState]:
    """Hooks installed for the duration of the block; always removed in `finally`."""
    handles = install(sites, state)
    try:
        yield state
    finally:
        remove(handles)
