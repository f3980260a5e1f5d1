"""Mixture-of-experts counting on the HF backend: which experts each language is routed to, and
the neurons inside each expert over the tokens routed to it.

Routing: a forward hook on each sparse layer's router reads what the router returned, (logits,
weights, indices) for the layer's B*S tokens, and counts the indices it chose: the model's own
selection (softmax before or after top-k, renormalisation, ties), never a recomputation.
`router_prob_sum` adds softmax(logits) over all experts in float32, per token, in float64.

Expert neurons: transformers 5.x stores the experts as fused parameter tensors and runs them with
grouped matmuls that no module hook sees, so while profiling each experts module's `forward` is
shadowed (an instance attribute, removed afterwards) by the eager per-expert loop transformers
itself ships: expert by expert, the tokens routed to it, act(gate) * up, down projection, weighted
sum. The site (act(gate), or the down projection's input) of each expert is reduced by the same
kernels as the dense sites, into an Accumulator whose "layers" are (layer, expert) pairs. Only the
experts' statistics need this loop; a run never changes what the model computes (tests compare
the hidden states with and without it).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from langneurons.kernels.reference import Accumulator
from langneurons.profiler import moe_layout
from langneurons.profiler.architectures import ArchSpec
from langneurons.profiler.hooks import HookState
from langneurons.store.schema import EXPERT_VARS, ROUTING_VARS


@dataclass
class MoeAccumulator:
    """Device-resident MoE totals for N languages, L layers, E experts, F_e neurons per expert."""

    n_routed: torch.Tensor             # [N, L, E] int64
    router_prob_sum: torch.Tensor      # [N, L, E] float64
    experts: Accumulator | None        # layers = L * E (index layer * E + expert); None: routing only

    @classmethod
    def zeros(cls, n_languages: int, n_layers: int, n_experts: int, threshold: float, device: torch.device,
              expert_d_ff: int | None = None) -> "MoeAccumulator":
        """Routing totals; with `expert_d_ff`, also the neurons inside every expert."""
        shape = (n_languages, n_layers, n_experts)
        experts = None
        if expert_d_ff is not None:
            # one edge (the threshold): the kernels always bin, and expert histograms are not kept
            experts = Accumulator.zeros(n_languages, n_layers * n_experts, expert_d_ff, (threshold,), threshold,
                                        device)
        return cls(torch.zeros(shape, dtype=torch.int64, device=device),
                   torch.zeros(shape, dtype=torch.float64, device=device), experts)

    def zero_(self) -> None:
        self.n_routed.zero_()
        self.router_prob_sum.zero_()
        if self.experts is not None:
            self.experts.zero_()

    def to_arrays(self, language: int = 0) -> dict:
        """One language's MoE variables on the host, keyed by schema name."""
        # copies even on the CPU: the next shard zeroes these accumulators in place
        out = {v: getattr(self, v)[language].to("cpu", copy=True).numpy() for v in ROUTING_VARS}
        if self.experts is not None:
            L, E = self.n_routed.shape[1:]
            for v in EXPERT_VARS:  # the experts' accumulator holds the neuron variables they name
                a = getattr(self.experts, v.removeprefix("expert_"))[language]
                out[v] = a.reshape(L, E, a.shape[-1]).to("cpu", copy=True).numpy()
        return out


def routing_accumulate_(macc: MoeAccumulator, layer: int, logits: torch.Tensor, indices: torch.Tensor,
                        token_lang: torch.Tensor) -> None:
    """Add one layer's routing of one pass: the spec (plain torch, [T, E] is small; no host sync).

    n_routed[n, layer, e]        += #{t : lang(t)=n, e in indices[t]}
    router_prob_sum[n, layer, e] += sum over tokens t of language n of softmax(logits[t])[e]
    """
    N, _, E = macc.n_routed.shape
    lang = token_lang.reshape(-1).long() + 1                    # 0 = not counted: a trash row
    if logits.shape[0] != lang.shape[0] or indices.shape[0] != lang.shape[0]:
        raise RuntimeError(f"internal: the router saw {logits.shape[0]} tokens, the pass has {lang.shape[0]}")
    flat = (lang[:, None] * E + indices.long()).reshape(-1)
    counts = torch.zeros((N + 1) * E, dtype=torch.int64, device=logits.device)
    counts.index_add_(0, flat, torch.ones_like(flat))
    macc.n_routed[:, layer] += counts.view(N + 1, E)[1:]
    probs = torch.softmax(logits.float(), dim=-1).double()     # [T, E]
    sums = torch.zeros(N + 1, E, dtype=torch.float64, device=logits.device).index_add_(0, lang, probs)
    macc.router_prob_sum[:, layer] += sums[1:]


def _expert_gate(experts: nn.Module, gate_up: torch.Tensor, kind: str) -> torch.Tensor:
    """The `gate` site of an expert: its activation on the gate half of the projection."""
    if kind == "gpt_oss":  # as GptOssExperts._apply_gate computes it
        gate = gate_up[..., ::2].clamp(min=None, max=experts.limit)
        return gate * torch.sigmoid(gate * experts.alpha)
    return experts.act_fn(gate_up.chunk(2, dim=-1)[0])


def _expert_forward(experts: nn.Module, layer: int, state: HookState, macc: MoeAccumulator, kind: str):
    """The eager per-expert loop of transformers' experts modules (both weight layouts), reducing
    each expert's site on the way."""
    E = macc.n_routed.shape[2]
    transposed = getattr(experts, "is_transposed", False)
    bias = getattr(experts, "has_bias", False)

    def forward(hidden_states, top_k_index, top_k_weights):
        out = torch.zeros_like(hidden_states)
        token_lang = state.token_lang
        hit = torch.bincount(top_k_index.reshape(-1), minlength=E).nonzero().reshape(-1).tolist()
        for e in hit:
            top_k_pos, token_idx = torch.where((top_k_index == e).T)  # transformers' own order
            x = hidden_states[token_idx]
            w = experts.gate_up_proj[e]
            gate_up = x @ w if transposed else nn.functional.linear(x, w)
            if bias:
                gate_up = gate_up + experts.gate_up_proj_bias[e]
            h = experts._apply_gate(gate_up)                 # the model's own act(gate) * up
            site = h if state.site == "down_in" else _expert_gate(experts, gate_up, kind)
            state.accumulate(macc.experts, layer * E + e, site, token_lang[token_idx])
            w = experts.down_proj[e]
            y = h @ w if transposed else nn.functional.linear(h, w)
            if bias:
                y = y + experts.down_proj_bias[e]
            y = y * top_k_weights[token_idx, top_k_pos, None]
            out.index_add_(0, token_idx, y.to(out.dtype))
        return out

    return forward


@contextmanager
def installed(model: nn.Module, arch: ArchSpec, state: HookState, macc: MoeAccumulator) -> Iterator[None]:
    """Router hooks (and, with expert neurons, the experts' per-expert loop) for the duration of
    the block; always removed in `finally`."""
    spec = arch.moe
    handles, shadowed = [], []
    try:
        for layer, block in moe_layout.sparse_blocks(model, arch):
            def hook(_m, _args, output, layer=layer):
                if state.active:
                    state.check_batch()
                    logits, _weights, indices = output
                    routing_accumulate_(macc, layer, logits, indices, state.token_lang)
            handles.append(getattr(block, spec.router).register_forward_hook(hook))
            if macc.experts is not None:
                experts = getattr(block, spec.experts)
                # an instance-level forward already there (another library's wrapper) comes back after
                shadowed.append((experts, vars(experts).get("forward")))
                experts.forward = _expert_forward(experts, layer, state, macc, spec.expert_gate)
        yield
    finally:
        for h in handles:
            h.remove()
        for m, before in shadowed:
            if before is None:
                del m.forward  # the class's forward again
            else:
                m.forward = before
