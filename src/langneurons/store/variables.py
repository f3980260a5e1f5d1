"""The statistics, declared once: each variable's name, axes, dtypes and what it holds.

Every list of variables elsewhere is derived from `VARIABLES` (the schema's groups, dtypes and
dimensions, the partials' narrow dtypes, the kernels' and accumulators' output order) or checked
against it (`Stats` and `kernels.reference.Accumulator` fields: tests/test_contract.py). Every
variable of a store is the sum of its shards' partials: counts in integers, sums in floats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    group: Literal["tokens", "neuron", "routing", "expert"]
    dims: tuple[str, ...]       # after the leading `language` (totals) or `shard` (partials) axis
    total: str                  # the totals' dtype (int64 counts cannot overflow; float64 sums)
    partial: str                # a shard's stored dtype: exact under schema.PARTIAL_MAX_TOKENS
    holds: str                  # what a token adds to it

    @property
    def is_sum(self) -> bool:
        """A floating-point sum (of activations or probabilities); every other variable counts."""
        return self.total.startswith("float")


_NEURON = ("layer", "neuron")
_EXPERT = ("layer", "expert", "expert_neuron")
VARIABLES: tuple[Variable, ...] = (
    Variable("n_tokens", "tokens", (), "int64", "int64", "1 per counted text token"),
    Variable("n_fired", "neuron", _NEURON, "int64", "int32", "1 where the activation > threshold (finite)"),
    Variable("act_sum", "neuron", _NEURON, "float64", "float32", "the activation (finite values)"),
    Variable("act_sumsq", "neuron", _NEURON, "float64", "float32", "the squared activation (finite values)"),
    Variable("act_hist", "neuron", (*_NEURON, "bin"), "int64", "int32", "1 in the bin (lower, upper] holding it"),
    Variable("n_nonfinite", "neuron", _NEURON, "int64", "int32", "1 where the activation is NaN or +-inf"),
    Variable("n_routed", "routing", ("layer", "expert"), "int64", "int32", "1 where the router chose the expert"),
    Variable("router_prob_sum", "routing", ("layer", "expert"), "float64", "float32",
             "the expert's probability: softmax over all experts of the router logits"),
    Variable("expert_n_fired", "expert", _EXPERT, "int64", "int32", "as n_fired, over the tokens routed to the expert"),
    Variable("expert_act_sum", "expert", _EXPERT, "float64", "float32", "as act_sum, over the tokens routed to it"),
    Variable("expert_act_sumsq", "expert", _EXPERT, "float64", "float32", "as act_sumsq, over the tokens routed to it"),
    Variable("expert_n_nonfinite", "expert", _EXPERT, "int64", "int32", "as n_nonfinite, over the tokens routed to it"),
)
BY_NAME: dict[str, Variable] = {v.name: v for v in VARIABLES}


def names(*groups: str) -> tuple[str, ...]:
    """The variables of these groups, in declaration order (the order they are written)."""
    return tuple(v.name for v in VARIABLES if v.group in groups)


def total_dtypes() -> dict[str, np.dtype]:
    return {v.name: np.dtype(v.total) for v in VARIABLES}


def partial_dtypes() -> dict[str, np.dtype]:
    return {v.name: np.dtype(v.partial) for v in VARIABLES}
