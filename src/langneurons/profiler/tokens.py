"""Token accounting shared by every backend: what is a text token, and how sentences are batched.

Each sentence is one sequence. The tokenizer adds its special tokens (BOS/EOS) as the model expects
them in use; they are fed to the model but not counted unless `include_special_tokens` is set.
Padding is never counted. Both backends call `encode`, so they count exactly the same tokens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

from langneurons.config import DEFAULT_MAX_LENGTH

log = logging.getLogger(__name__)

_POSITION_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def position_limit(model_config) -> int | None:
    """How many positions the model was built for (None: no limit, e.g. ALiBi in BLOOM)."""
    cfg = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    for name in _POSITION_FIELDS:
        v = getattr(cfg, name, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def resolve_max_length(requested: int | None, limit: int | None, backend: str, *, quiet: bool = False) -> int:
    """The longest sequence a run feeds the model: `requested`, or the default capped at the model's
    position limit. Positions beyond the limit were never trained (RoPE) or do not exist (learned
    embeddings), so asking for more is refused. vLLM needs one position more than the prompt for the
    token it samples, so there the prompt may use limit - 1."""
    usable = None if limit is None else (limit - 1 if backend == "vllm" else limit)
    if requested is None:
        if usable is not None and usable < DEFAULT_MAX_LENGTH:
            if not quiet:
                log.info("max_length: %d (the model has %d positions%s)", usable, limit,
                         "; vLLM keeps one for the sampled token" if backend == "vllm" else "")
            return usable
        return DEFAULT_MAX_LENGTH
    if usable is not None and requested > usable:
        extra = (f" (vLLM needs one position for the token it samples: at most {usable}, or use --backend hf)"
                 if backend == "vllm" else "")
        raise ValueError(f"--max-length {requested} exceeds the model's position limit of {limit} tokens{extra}; "
                         f"give --max-length {usable} or less (longer sentences are truncated, and logged)")
    return requested


@dataclass(frozen=True, slots=True)
class Encoded:
    input_ids: list[list[int]]   # per sentence, as fed to the model
    counted: list[list[bool]]    # per token: does it count towards the statistics?
    n_truncated: int             # sentences cut at max_length

    @property
    def n_counted(self) -> int:
        return sum(sum(c) for c in self.counted)


def encode(tokenizer, sentences: Sequence[str], *, include_special_tokens: bool,
           max_length: int) -> Encoded:
    enc = tokenizer(list(sentences), add_special_tokens=True, return_special_tokens_mask=True,
                    truncation=False, padding=False)
    ids, counted, n_trunc = [], [], 0
    for seq, special in zip(enc["input_ids"], enc["special_tokens_mask"]):
        if len(seq) > max_length:
            n_trunc += 1
            seq, special = seq[:max_length], special[:max_length]
        ids.append(list(seq))
        counted.append([include_special_tokens or not s for s in special])
    if n_trunc:
        log.warning("%d of %d sentences were longer than max_length=%d tokens and were truncated",
                    n_trunc, len(sentences), max_length)
    return Encoded(ids, counted, n_trunc)


def batches_by_budget(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Group sequence indices into batches whose padded size (n * longest) fits `budget`.

    Longest first, ties by index: deterministic, so a retried shard recomputes the same batches
    (and the same float sums, bit for bit). A sequence longer than the budget gets a batch alone.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches, cur, cur_max = [], [], 0
    for i in order:
        new_max = max(cur_max, lengths[i])
        if cur and new_max * (len(cur) + 1) > budget:
            batches.append(cur)
            cur, new_max = [], lengths[i]
        cur.append(i)
        cur_max = new_max
    if cur:
        batches.append(cur)
    return batches
