"""What every backend provides, and the model facts recorded with the results."""

from __future__ import annotations

from typing import Protocol, Sequence

from langneurons.profiler.checkpoint import tokenizer_fingerprint, weights_fingerprint
from langneurons.store.schema import ModelInfo  # noqa: F401  (re-exported)
from langneurons.store.stats import Stats  # noqa: F401  (re-exported)


class Backend(Protocol):
    info: ModelInfo

    def profile(self, sentences: Sequence[str]) -> Stats:
        """Statistics of `sentences` (all of one language), each one sequence."""

    def close(self) -> None:
        """Free the model and its device memory."""


def describe(model: str, revision: str | None, architecture: str, n_layers: int, d_ff: int,
             dtype: str, *, bos: str, fingerprint: str | None = None, moe=None) -> ModelInfo:
    """The ModelInfo of a model (the driver's view before loading, or a worker's after): the one
    place it is built. `bos`: the BOS rule's record (tokens.BosRule); `moe`: a MoE model's
    moe_layout.MoeLayout."""
    return ModelInfo(model=model, fingerprint=fingerprint or weights_fingerprint(model, revision),
                     tokenizer_fingerprint=tokenizer_fingerprint(model, revision), bos=bos,
                     architecture=architecture, n_layers=n_layers, d_ff=d_ff, dtype=dtype,
                     moe=None if moe is None else moe.record())
