"""The part of the vLLM backend that runs inside vLLM's worker processes (via `LLM.apply_model`).

Functions here are pickled by reference, so they must live in an importable module. State lives
on the model object itself (`model._langneurons`), one per worker (tensor-parallel rank).

Which tokens count: vLLM packs the scheduled sequences into one flat batch and passes `positions`
to the model. With chunked prefill off and every prompt fitting one step (the backend ensures
both), each sequence appears whole and contiguous, starting at position 0. So the tokenizer-added
special tokens are recognised by position alone: the first `n_prefix` and the last `n_suffix`
tokens of each sequence (the HF backend's `special_tokens_mask`, which the driver checked is the
same for every sentence). The mask is built on the device from `positions`, without a host sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from langneurons.kernels.dispatch import get_accumulate, resolve
from langneurons.kernels.reference import Accumulator

#: vLLM model class -> (blocks path, MLP attribute, gated up projection, down projection)
VLLM_SITES: dict[str, tuple[str, str, str, str]] = {
    "llama": ("model.layers", "mlp", "gate_up_proj", "down_proj"),
    "mistral": ("model.layers", "mlp", "gate_up_proj", "down_proj"),
    "qwen2": ("model.layers", "mlp", "gate_up_proj", "down_proj"),
    "qwen3": ("model.layers", "mlp", "gate_up_proj", "down_proj"),
}


@dataclass
class _State:
    acc: Accumulator
    accumulate: object
    n_prefix: int
    n_suffix: int
    handles: list
    token_lang: torch.Tensor | None = None
    active: bool = False


def _get(root: nn.Module, path: str) -> nn.Module:
    for part in filter(None, path.split(".")):
        root = getattr(root, part)
    return root


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
            n_prefix: int, n_suffix: int, kernel: str) -> tuple[int, int, str]:
    """Install the hooks in this worker; returns (n_layers, local d_ff of this rank, the kernel
    that reduces here: what --kernel auto became on this worker's device)."""
    if getattr(model, "_langneurons", None) is not None:
        uninstall(model)
    if model_type not in VLLM_SITES:
        raise ValueError(f"the vLLM backend supports {sorted(VLLM_SITES)}, not {model_type!r}; "
                         "use --backend hf for this model")
    layers_path, mlp_attr, up_attr, down_attr = VLLM_SITES[model_type]
    blocks = _get(model, layers_path)
    down0 = getattr(getattr(blocks[0], mlp_attr), down_attr)
    d_local = int(down0.input_size_per_partition)  # this rank's slice of d_ff (RowParallelLinear)
    device = next(down0.parameters()).device
    acc = Accumulator.zeros(1, len(blocks), d_local, edges, threshold, device)
    chosen = resolve(kernel, device)
    state = _State(acc, get_accumulate(chosen, device), n_prefix, n_suffix, [])

    def top_pre(_m, args, kwargs):
        if not state.active:
            return
        positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
        state.token_lang = _token_lang(positions, state.n_prefix, state.n_suffix)
        state.acc.count_tokens(state.token_lang)

    state.handles.append(model.register_forward_pre_hook(top_pre, with_kwargs=True))
    for i, block in enumerate(blocks):
        mlp = getattr(block, mlp_attr)
        if site == "down_in":
            def pre(_m, args, layer=i):
                if state.active:
                    x = args[0]
                    state.accumulate(state.acc, layer, x.reshape(-1, x.shape[-1]), state.token_lang)
            state.handles.append(getattr(mlp, down_attr).register_forward_pre_hook(pre))
        else:
            def post(_m, _args, out, layer=i):
                if state.active:
                    y = out[0] if isinstance(out, tuple) else out      # [T, 2 * d_local]: gate | up
                    g = y.reshape(-1, y.shape[-1])[:, :d_local]
                    # act(gate) computed here, in the model's dtype as SiluAndMul does; the model's
                    # own fused op still runs on the untouched output.
                    state.accumulate(state.acc, layer, nn.functional.silu(g), state.token_lang)
            state.handles.append(getattr(mlp, up_attr).register_forward_hook(post))
    model._langneurons = state
    return len(blocks), d_local, chosen


def set_special(model: nn.Module, n_prefix: int, n_suffix: int) -> None:
    model._langneurons.n_prefix = n_prefix
    model._langneurons.n_suffix = n_suffix


def start(model: nn.Module) -> None:
    state: _State = model._langneurons
    state.acc.zero_()
    state.active = True


def stop(model: nn.Module) -> dict:
    """Stop counting; return this rank's statistics as host numpy arrays."""
    state: _State = model._langneurons
    state.active = False
    state.token_lang = None
    s = state.acc.to_stats(0)
    return {"n_tokens": s.n_tokens, **{k: v for k, v in s.arrays().items() if k != "n_tokens"}}


def uninstall(model: nn.Module) -> None:
    state = getattr(model, "_langneurons", None)
    if state is not None:
        for h in state.handles:
            h.remove()
        model._langneurons = None
