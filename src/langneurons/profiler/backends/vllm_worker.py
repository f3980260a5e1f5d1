"""The part of the vLLM backend that runs inside vLLM's worker processes (via `LLM.apply_model`).

Functions here are pickled by reference, so they must live in an importable module. State lives
on the model object itself (`model._langneurons`), one per worker (tensor-parallel rank): the same
`hooks.HookState` the HF backend uses, on the hook points `sites.vllm_site_modules` names (the
one architecture table), installed once and switched on for each `profile` call.

Which tokens count: vLLM packs the scheduled sequences into one flat batch and passes `positions`
to the model. With chunked prefill off and every prompt fitting one step (the backend ensures
both), each sequence appears whole and contiguous, starting at position 0. So the tokenizer-added
special tokens are recognised by position alone: the first `n_prefix` and the last `n_suffix`
tokens of each sequence (the HF backend's `special_tokens_mask`, which the driver checked is the
same for every sentence). The mask is built on the device from `positions`, without a host sync.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from langneurons.kernels.dispatch import get_accumulate, resolve
from langneurons.kernels.reference import Accumulator
from langneurons.profiler import hooks, sites
from langneurons.profiler.devices import dtype_name


@dataclass
class _Engine:
    state: hooks.HookState
    n_prefix: int = 0
    n_suffix: int = 0
    handles: list = field(default_factory=list)


def _token_lang(positions: torch.Tensor, n_prefix: int, n_suffix: int) -> torch.Tensor:
    """0 for counted tokens, -1 for the tokenizer's special tokens; [num_tokens] int32."""
    pos = positions.reshape(-1)
    T = pos.numel()
    starts = (pos == 0).to(torch.int64)
    seq = torch.cumsum(starts, 0) - 1                                 # sequence index per token
    lengths = torch.zeros(T, dtype=torch.int64, device=pos.device).scatter_add_(
        0, seq.clamp_min(0), torch.ones_like(seq))
    length = lengths[seq.clamp_min(0)]
    special = (pos < n_prefix) | (pos >= length - n_suffix)
    return torch.where(special, -1, 0).to(torch.int32)


def install(model: nn.Module, model_type: str, site: str, threshold: float, edges: list[float],
            kernel: str, act: str) -> dict:
    """Install the hooks in this worker (inactive until `start`). Returns what this rank loaded:
    n_layers, d_local (its slice of d_ff), dtype, and the kernel --kernel became on its device."""
    from transformers.activations import ACT2FN

    if getattr(model, "_langneurons", None) is not None:
        uninstall(model)
    points, d_local = sites.vllm_site_modules(model, model_type, site, ACT2FN[act])
    param = next(points[0].module.parameters())
    chosen = resolve(kernel, param.device)
    acc = Accumulator.zeros(1, len(points), d_local, edges, threshold, param.device)
    engine = _Engine(hooks.HookState(acc, get_accumulate(chosen, param.device), compact=False, site=site))
    engine.state.active = False

    def top_pre(_m, args, kwargs):
        if engine.state.active:
            positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
            engine.state.set_token_lang(_token_lang(positions, engine.n_prefix, engine.n_suffix))
            acc.count_tokens(engine.state.token_lang)

    engine.handles.append(model.register_forward_pre_hook(top_pre, with_kwargs=True))
    engine.handles += hooks.install(points, engine.state)
    model._langneurons = engine
    return {"n_layers": len(points), "d_local": d_local, "dtype": dtype_name(param.dtype), "kernel": chosen}


def set_special(model: nn.Module, n_prefix: int, n_suffix: int) -> None:
    model._langneurons.n_prefix = n_prefix
    model._langneurons.n_suffix = n_suffix


def start(model: nn.Module) -> None:
    state = model._langneurons.state
    state.acc.zero_()
    state.active = True


def stop(model: nn.Module) -> dict:
    """Stop counting; return this rank's statistics as host numpy arrays."""
    state = model._langneurons.state
    state.active = False
    state.clear()
    s = state.acc.to_stats(0)
    return {"n_tokens": s.n_tokens, **{k: v for k, v in s.arrays().items() if k != "n_tokens"}}


def uninstall(model: nn.Module) -> None:
    engine = getattr(model, "_langneurons", None)
    if engine is not None:
        hooks.remove(engine.handles)
        model._langneurons = None
