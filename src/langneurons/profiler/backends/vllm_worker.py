"""The part of the vLLM backend that runs inside vLLM's worker processes (via `LLM.apply_model`).

Functions here are pickled by reference, so they must live in an importable module. State lives
on the model object itself (`model._langneurons`), one per worker (tensor-parallel rank): the same
`hooks.HookState` the HF backend uses, on the hook points `vllm_sites.vllm_site_modules` names (the
one architecture table), installed once and switched on for each `profile` call.

Which tokens count: vLLM packs the scheduled sequences into one flat batch and passes `positions`
to the model. With chunked prefill off and every prompt fitting one step (the backend ensures
both), each sequence appears whole and contiguous, starting at position 0. So the tokenizer-added
special tokens are recognised by position alone: the first `n_prefix` and the last `n_suffix`
tokens of each sequence (the HF backend's `special_tokens_mask`, which the driver checked is the
same for every sentence). The mask is built on the device from `positions`, without a host sync,
into a static buffer the hooks read.

Eager or compiled. An eager engine gets its hooks after it started (`install`, by `apply_model`);
a compiled one while its model loads, before vLLM compiles it (`vllm_plugin`, `compiled=True`),
and its hooks then reduce through the custom op the graph keeps (`profiler/ops.py`). Either way
what changes from step to step lives on the device, never in Python the graph would have frozen:
the token languages (a static buffer), the special-token counts, whether counting is on (`gate`),
and the counters the backend checks (forward passes, blocks reduced). A compiled engine keeps its
hooks for its lifetime: counting is switched by `gate`, not by installing.

Mixture of experts: each routing layer's router reports the expert ids it chose through the
fused-MoE router's `set_capture_fn` (what vLLM itself uses to capture routed experts, called
before any expert-parallel remapping: logical ids), and a forward hook on the gate reads its
logits for `router_prob_sum`; both reduce with `moe.routing_accumulate_`, the HF backend's spec.
The gate is replicated, so every tensor-parallel rank counts the same routing; rank 0's is used.
vLLM's fused-MoE kernels never materialise an expert's activations where a hook could see them
(on the CPU they run on repacked weights), so no expert neuron statistics come from vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from langneurons.kernels.dispatch import get_accumulate, resolve
from langneurons.kernels.reference import Accumulator
from langneurons.profiler import architectures, hooks, moe, ops, vllm_sites
from langneurons.profiler.backends.vllm_plugin import hooks_missing
from langneurons.profiler.devices import dtype_name
from langneurons.store.stats import Stats


@dataclass(frozen=True, slots=True)
class RankLoaded:
    """What one rank loaded and installed (`install`'s report)."""

    n_layers: int
    d_local: int                 # this rank's slice of d_ff
    dtype: str
    kernel: str                  # the kernel it reduces with
    hooked: tuple[str, ...]      # how the site is read (vllm_sites.SiteModule kinds)
    routing: tuple[int, int, tuple[int, ...]] | None  # (experts, top-k, routing layers) of a MoE model


@dataclass(frozen=True, slots=True)
class RankCounts:
    """One rank's statistics of one `profile` call (`stop`'s report)."""

    stats: Stats                 # its slice of the neuron axis; routing (replicated gate) in stats.moe
    passes: int                  # forward passes run while counting
    n_reduced: int               # blocks its sites reduced: one per site and pass, or a hook was bypassed
    n_sites: int


@dataclass
class _Engine:
    state: hooks.HookState
    loaded: RankLoaded
    compiled: bool
    specials: torch.Tensor  # [2] int64 on the device: tokenizer-added tokens before, after each sentence
    passes: torch.Tensor    # [1] int64 on the device: forward passes while counting
    moe: moe.MoeAccumulator | None = None
    n_sites: int = 0   # hook points; each reduces once per forward pass
    handles: list = field(default_factory=list)


def _token_lang(positions: torch.Tensor, specials: torch.Tensor) -> torch.Tensor:
    """0 for counted tokens, -1 for the tokenizer's special tokens; [num_tokens] int32."""
    pos = positions.reshape(-1)
    T = pos.numel()
    starts = (pos == 0).to(torch.int64)
    seq = torch.cumsum(starts, 0) - 1                                 # sequence index per token
    lengths = torch.zeros(T, dtype=torch.int64, device=pos.device).scatter_add_(
        0, seq.clamp_min(0), torch.ones_like(seq))
    length = lengths[seq.clamp_min(0)]
    special = (pos < specials[0]) | (pos >= length - specials[1])
    return torch.where(special, -1, 0).to(torch.int32)


def install(model: nn.Module, model_type: str, site: str, threshold: float, edges: list[float],
            kernel: str, act: str | None, max_tokens: int, compiled: bool = False) -> RankLoaded:
    """Install the hooks in this worker (counting nothing until `start`); reports what this rank
    loaded. `max_tokens`: the most tokens one step holds (the engine's batch budget). `compiled`:
    called while the model loads, before vLLM compiles it (`vllm_plugin`): the hooks reduce
    through the custom op and stay for the engine's lifetime."""
    from transformers.activations import ACT2FN

    if getattr(model, "_langneurons", None) is not None:
        if model._langneurons.compiled:
            raise RuntimeError("this vLLM engine was compiled with langneurons' hooks; they cannot be "
                               "reinstalled (start a new backend for another site, threshold or bin edges)")
        uninstall(model)
    if site == "gate" and act is None:
        raise ValueError("the model config names no MLP activation (hidden_act); the vLLM backend needs it to "
                         "compute the gate site: use --site down_in or --backend hf")
    spec = architectures.vllm_spec(model_type)
    points, d_local = vllm_sites.vllm_site_modules(model, spec, site, ACT2FN[act] if act else None)
    n_layers = len(architectures.module_at(model, spec.layers))
    param = next(model.parameters())
    chosen = resolve(kernel, param.device)
    dev = param.device
    acc = Accumulator.zeros(1, n_layers, d_local, edges, threshold, dev)
    state = hooks.HookState(acc, get_accumulate(chosen, dev), compact=False, site=site)
    state.active = False
    state.token_lang = torch.full((max_tokens,), -1, dtype=torch.int32, device=dev)  # static: graphs read it
    state.gate = torch.zeros(1, dtype=torch.int64, device=dev)
    state.reduced = torch.zeros(1, dtype=torch.int64, device=dev)
    sparse = vllm_sites.vllm_sparse_blocks(model, spec)
    routing = None
    if sparse:
        if compiled:
            raise ValueError("routing is counted from vLLM's router callback, which a compiled graph does not "
                             "run per step: profile MoE models with --vllm-eager")
        first = sparse[0][1].experts
        routing = (int(first.router.global_num_experts), int(first.router.top_k), tuple(i for i, _ in sparse))
    loaded = RankLoaded(n_layers, d_local, dtype_name(param.dtype), chosen, tuple(sorted({p.kind for p in points})),
                        routing)
    engine = _Engine(state, loaded, compiled, specials=torch.zeros(2, dtype=torch.int64, device=dev),
                     passes=torch.zeros(1, dtype=torch.int64, device=dev), n_sites=len(points))
    if routing:
        engine.moe = moe.MoeAccumulator.zeros(1, n_layers, routing[0], threshold, dev)
    if compiled:
        ops.register(state)

    def top_pre(_m, args, kwargs):
        # device ops only, no host sync and no Python state: on a GPU this may be captured in a CUDA graph
        positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
        lang = torch.where(state.gate > 0, _token_lang(positions, engine.specials), -1)
        step = state.token_lang[: lang.numel()]
        step.copy_(lang)
        engine.passes += state.gate
        acc.count_tokens(step)

    engine.handles.append(model.register_forward_pre_hook(top_pre, with_kwargs=True))
    engine.handles += hooks.install(points, state)
    for layer, block in sparse:
        engine.handles += _install_routing(engine, layer, block)
    model._langneurons = engine
    return loaded


def loaded(model: nn.Module) -> RankLoaded:
    """What this rank loaded and installed (a compiled engine's hooks were installed at load)."""
    engine = getattr(model, "_langneurons", None)
    if engine is None:
        raise hooks_missing("hooks")
    return engine.loaded


class _Handle:
    """A removable handle for something that is not a torch hook (the router's capture callback)."""

    def __init__(self, remove):
        self.remove = remove


def _install_routing(engine: _Engine, layer: int, block: nn.Module) -> list:
    """The gate's logits (router_prob_sum) and the router's chosen ids (n_routed) of one layer."""
    state, macc = engine.state, engine.moe
    logits_of_pass: dict[str, torch.Tensor] = {}

    def gate_hook(_m, _args, output):
        if state.active:
            logits_of_pass["logits"] = output[0] if isinstance(output, tuple) else output

    def capture(topk_ids: torch.Tensor) -> None:
        if state.active:
            logits = logits_of_pass.pop("logits", None)
            if logits is None:
                raise RuntimeError(f"internal: layer {layer}'s router chose experts without its gate running")
            moe.routing_accumulate_(macc, layer, logits, topk_ids, state.token_lang[: topk_ids.shape[0]])

    router = block.experts.router
    if getattr(router, "capture_fn", None) is not None:
        raise RuntimeError("vLLM is already capturing routed experts (enable_return_routed_experts); "
                           "turn that off to profile with langneurons")
    router.set_capture_fn(capture)
    return [block.gate.register_forward_hook(gate_hook), _Handle(lambda: router.set_capture_fn(None))]


def hook_state(model: nn.Module) -> hooks.HookState:
    """This rank's hook state (what `install` put on the model), for code that instruments it."""
    return model._langneurons.state


def set_special(model: nn.Module, n_prefix: int, n_suffix: int) -> None:
    model._langneurons.specials.copy_(torch.tensor([n_prefix, n_suffix]))


def start(model: nn.Module) -> None:
    engine = model._langneurons
    state = engine.state
    state.acc.zero_()
    if engine.moe is not None:
        engine.moe.zero_()
    for t in (engine.passes, state.reduced):
        t.zero_()
    state.gate.fill_(1)
    state.active = True


def stop(model: nn.Module) -> RankCounts:
    """Stop counting; this rank's statistics on the host, with the forward passes run while
    counting and the blocks the sites reduced (the backend checks one per site and pass)."""
    engine = model._langneurons
    state = engine.state
    state.gate.fill_(0)
    state.active = False
    stats = state.acc.to_stats(0)
    if engine.moe is not None:
        stats.moe = engine.moe.to_arrays(0)
    return RankCounts(stats, int(engine.passes.item()), int(state.reduced.item()), engine.n_sites)


def uninstall(model: nn.Module) -> None:
    """Remove an eager engine's hooks. A compiled engine's stay in its graph (switched off by
    `stop`); they are released with it."""
    engine = getattr(model, "_langneurons", None)
    if engine is not None and not engine.compiled:
        hooks.remove(engine.handles)
        model._langneurons = None
