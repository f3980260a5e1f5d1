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
                         f"give --max-length {usable} or less (longer rows are handled by --long-documents)")
    return requested


@dataclass(frozen=True, slots=True)
class Encoded:
    input_ids: list[list[int]]   # per sequence (a sentence, or one window of a long one), as fed to the model
    counted: list[list[bool]]    # per token: does it count towards the statistics?
    n_long: int                  # rows longer than max_length (windowed or truncated)
    row_of: list[int]            # per sequence: the index of the sentence it came from

    @property
    def n_counted(self) -> int:
        return sum(sum(c) for c in self.counted)


LONG_DOCUMENTS = ("window", "truncate", "refuse")


class TooLong(ValueError):
    """A row longer than --max-length under --long-documents refuse."""


def encode(tokenizer, sentences: Sequence[str], *, include_special_tokens: bool, max_length: int,
           long_documents: str = "window", where: Sequence[str] | None = None) -> Encoded:
    """Token ids of each sentence as the model sees them, and which tokens count.

    A row longer than `max_length` (special tokens included) is, by `long_documents`:
    - window:   split into consecutive windows, each a sequence (a forward pass) of its own that
                starts at position 0 and carries the tokenizer's leading and trailing special
                tokens like any sentence; every text token is counted exactly once, in the one
                window that holds it (special tokens, per window, only with include_special_tokens);
                each window has max_length - (number of special tokens) text tokens, the last fewer;
    - truncate: cut to its first max_length tokens (the trailing special tokens are cut with it);
    - refuse:   a `TooLong` error naming the row (`where[i]`, else its index in `sentences`).
    """
    if long_documents not in LONG_DOCUMENTS:
        raise ValueError(f"long_documents {long_documents!r} is not one of {LONG_DOCUMENTS}")
    enc = tokenizer(list(sentences), add_special_tokens=True, return_special_tokens_mask=True,
                    truncation=False, padding=False)
    ids, counted, row_of, n_long = [], [], [], 0
    for i, (seq, special) in enumerate(zip(enc["input_ids"], enc["special_tokens_mask"])):
        seq, special = list(seq), list(special)
        if len(seq) <= max_length:
            pieces = [(seq, special)]
        else:
            n_long += 1
            if long_documents == "refuse":
                row = where[i] if where is not None else f"sentence {i}"
                raise TooLong(f"{row} has {len(seq)} tokens, more than --max-length {max_length}; profile it in "
                              "windows (--long-documents window), cut it (--long-documents truncate), or "
                              "raise --max-length")
            pieces = (_windows(seq, special, max_length) if long_documents == "window"
                      else [(seq[:max_length], special[:max_length])])
        for p_ids, p_special in pieces:
            ids.append(p_ids)
            counted.append([include_special_tokens or not s for s in p_special])
            row_of.append(i)
    if n_long and long_documents == "truncate":
        log.warning("%d of %d sentences were longer than max_length=%d tokens and were truncated",
                    n_long, len(sentences), max_length)
    return Encoded(ids, counted, n_long, row_of)


def _windows(seq: list[int], special: list[int], max_length: int) -> list[tuple[list[int], list[int]]]:
    """`seq` as windows of at most max_length tokens, each with seq's leading/trailing specials."""
    n_pre = next((k for k, s in enumerate(special) if not s), len(seq))
    n_suf = next((k for k, s in enumerate(reversed(special)) if not s), 0)
    width = max_length - n_pre - n_suf
    if width < 1:
        raise ValueError(f"--max-length {max_length} leaves no room for text between the tokenizer's "
                         f"{n_pre + n_suf} special tokens; raise --max-length")
    pre, suf = seq[:n_pre], seq[len(seq) - n_suf:]
    body, body_special = seq[n_pre:len(seq) - n_suf], special[n_pre:len(seq) - n_suf]
    out = []
    for k in range(0, len(body), width):
        out.append((pre + body[k:k + width] + suf,
                    [1] * n_pre + body_special[k:k + width] + [1] * n_suf))
    return out


def counted_tokens(tokenizer, sentences: Sequence[str], *, include_special_tokens: bool, max_length: int,
                   long_documents: str, where: Sequence[str] | None = None) -> list[int]:
    """Tokens each sentence contributes to the statistics: exactly what `encode` counts."""
    enc = encode(tokenizer, sentences, include_special_tokens=include_special_tokens, max_length=max_length,
                 long_documents=long_documents, where=where)
    out = [0] * len(sentences)
    for row, c in zip(enc.row_of, enc.counted):
        out[row] += sum(c)
    return out


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
