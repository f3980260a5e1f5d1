"""A mixture-of-experts model's layout (experts, top-k, expert width, which layers route and which
have a dense FFN), read from its modules: what the store records as `moe`."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from langneurons.profiler.architectures import ArchSpec, UnsupportedArchitecture, module_at
from langneurons.profiler.sites import dense_ffn


@dataclass(frozen=True, slots=True)
class MoeLayout:
    """A MoE model's layout, as the store records it (root attribute `moe`, schema.py)."""

    n_experts: int
    top_k: int
    expert_d_ff: int
    moe_layers: tuple[int, ...]     # layers with a router and experts
    dense_layers: tuple[int, ...]   # layers whose dense FFN the neuron variables count
    router: str                     # the selection rule (MoeSpec.semantics)
    shared_expert: bool
    expert_neurons: bool            # the expert_* variables are computed (the HF backend)

    def record(self) -> dict:
        return {"n_experts": self.n_experts, "top_k": self.top_k, "expert_d_ff": self.expert_d_ff,
                "moe_layers": list(self.moe_layers), "dense_layers": list(self.dense_layers),
                "router": self.router, "shared_expert": self.shared_expert, "expert_neurons": self.expert_neurons}


def sparse_blocks(model: nn.Module, spec: ArchSpec) -> list[tuple[int, nn.Module]]:
    """(layer, sparse MLP block) of every layer that routes; [] for a dense model."""
    if spec.moe is None:
        return []
    blocks = [(i, module_at(b, spec.mlp)) for i, b in enumerate(module_at(model, spec.layers))]
    return [(i, m) for i, m in blocks if hasattr(m, spec.moe.router)]


def moe_layout(model: nn.Module, spec: ArchSpec, *, expert_neurons: bool) -> MoeLayout | None:
    """The layout of a MoE model (None for a dense one), read from its modules (a meta-device
    model will do: only shapes and attributes are read)."""
    sparse = sparse_blocks(model, spec)
    if spec.moe is None:
        return None
    if not sparse:
        raise UnsupportedArchitecture(f"{spec.name}: no layer of this model has a router "
                                      f"({spec.moe.router!r}); its config builds a dense model")
    facts = set()
    for _, block in sparse:
        router, experts = getattr(block, spec.moe.router), getattr(block, spec.moe.experts)
        down = experts.down_proj  # [E, H, F], or [E, F, H] when the experts are stored transposed
        f = down.shape[1] if getattr(experts, "is_transposed", False) else down.shape[2]
        facts.add((int(router.num_experts), int(router.top_k), int(f)))
    if len(facts) != 1:
        raise UnsupportedArchitecture(f"{spec.name}: sparse layers differ in (experts, top-k, expert width): "
                                      f"{sorted(facts)}; one store holds one layout")
    (n_experts, top_k, f), = facts
    layers = module_at(model, spec.layers)
    dense = tuple(i for i, b in enumerate(layers) if dense_ffn(spec, module_at(b, spec.mlp)) is not None)
    return MoeLayout(n_experts, top_k, f, tuple(i for i, _ in sparse), dense, spec.moe.semantics,
                     spec.moe.shared is not None, expert_neurons)


