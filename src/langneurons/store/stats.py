"""Statistics in memory: the schema's variables of one language (one shard, or a total) as host
numpy arrays, and their narrow per-shard form (store/schema.py owns names, dims and dtypes)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from langneurons.store.schema import (
    DTYPES, EXPERT_VARS, NEURON_VARS, PARTIAL_DTYPES, PARTIAL_MAX_TOKENS, ROUTING_VARS, TRAILING_DIMS,
)


class PartialOverflow(ValueError):
    """A shard's statistics that its narrow partial cannot hold."""


@dataclass
class Stats:
    """Statistics of one language over some tokens (one shard, or a total): host numpy arrays.

    Shapes: n_fired/act_sum/act_sumsq/n_nonfinite [L, F]; act_hist [L, F, B]; n_tokens scalar;
    `moe` (MoE models): n_routed/router_prob_sum [L, E], expert_* [L, E, F_e], keyed by name.
    """

    n_tokens: int
    n_fired: np.ndarray
    act_sum: np.ndarray
    act_sumsq: np.ndarray
    act_hist: np.ndarray
    n_nonfinite: np.ndarray
    moe: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @classmethod
    def zeros(cls, n_layers: int, d_ff: int, n_bins: int, moe: dict | None = None) -> "Stats":
        """Zero statistics; with `moe` (a recorded MoE layout) also its variables."""
        size = {"layer": n_layers, "neuron": d_ff, "bin": n_bins}
        moe_vars: tuple[str, ...] = ()
        if moe:
            size.update(expert=moe["n_experts"], expert_neuron=moe["expert_d_ff"])
            moe_vars = ROUTING_VARS + (EXPERT_VARS if moe.get("expert_neurons") else ())
        z = {v: np.zeros(tuple(size[d] for d in TRAILING_DIMS[v]), dtype=DTYPES[v]) for v in NEURON_VARS + moe_vars}
        return cls(n_tokens=0, **{v: z[v] for v in NEURON_VARS}, moe={v: z[v] for v in moe_vars})

    def __iadd__(self, other: "Stats") -> "Stats":
        if set(self.moe) != set(other.moe):
            raise ValueError(f"internal: adding statistics of different variables ({sorted(self.moe)} "
                             f"vs {sorted(other.moe)})")
        self.n_tokens += int(other.n_tokens)
        for v in NEURON_VARS:
            getattr(self, v).__iadd__(getattr(other, v))
        for v, a in self.moe.items():
            a += other.moe[v]
        return self

    def arrays(self) -> dict[str, np.ndarray]:
        """All variables as arrays (n_tokens as a 0-d int64 array), keyed by schema name."""
        d = {v: getattr(self, v) for v in NEURON_VARS}
        d["n_tokens"] = np.asarray(self.n_tokens, dtype=np.int64)
        d.update(self.moe)
        return d

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "Stats":
        """The inverse of `arrays` (any dtypes: the caller's, e.g. a narrow partial's)."""
        a = dict(arrays)
        return cls(n_tokens=int(a.pop("n_tokens")), **{v: a.pop(v) for v in NEURON_VARS}, moe=a)

    def partial_arrays(self) -> dict[str, np.ndarray]:
        """The variables as a shard's partial stores them (PARTIAL_DTYPES); PartialOverflow
        when they would not fit exactly (too many tokens) or at all (a sum beyond float32)."""
        if self.n_tokens > PARTIAL_MAX_TOKENS:
            raise PartialOverflow(f"{self.n_tokens:,} counted tokens, more than a shard may hold "
                                  f"({PARTIAL_MAX_TOKENS:,}, the int32 bound of its counts)")
        out = {}
        for v, a in self.arrays().items():
            a = np.asarray(a)
            kind = PARTIAL_DTYPES[v]
            if kind.kind == "i" and a.size and (a.max() > np.iinfo(kind).max or a.min() < np.iinfo(kind).min):
                raise PartialOverflow(f"{v} holds {int(a.max()):,}, more than {kind} holds, with only "
                                      f"{self.n_tokens:,} tokens: these statistics are inconsistent")
            with np.errstate(over="ignore"):  # an overflow is refused just below
                narrow = a.astype(kind)
            if kind.kind == "f" and np.isinf(narrow).any() and np.isfinite(a).all():
                raise PartialOverflow(f"{v} reaches {float(np.abs(a).max()):.3g}, beyond float32's range: the "
                                      "model's activations are too large for these statistics")
            out[v] = narrow
        return out

    def equal(self, other: "Stats") -> bool:
        """Bit-for-bit equality (floats compared exactly, as resume guarantees)."""
        mine, theirs = self.arrays(), other.arrays()
        return set(mine) == set(theirs) and all(np.array_equal(mine[v], theirs[v]) for v in mine)

    def copy(self) -> "Stats":
        return dataclasses.replace(self, **{v: getattr(self, v).copy() for v in NEURON_VARS},
                                   moe={v: a.copy() for v, a in self.moe.items()})
