"""Token accounting shared by every backend: what is a text token, and how sentences are batched.

Each sentence is one sequence. The tokenizer adds its special tokens (BOS/EOS) as the model expects
them in use; they are fed to the model but not counted unless `include_special_tokens` is set.
Padding is never counted. Both backends, the token counts taken before a run and `ablate` call
`encode`, so they all feed and count exactly the same tokens.

The BOS rule (`bos_rule`, decided once per model and recorded as the store's `bos`): a model trained
with a BOS opening every sequence runs a broken forward pass without it (Gemma 3 270M's GGUF
tokenizer leaves it out: greedy continuations turn to "the the the"). Where the model expects one
and its tokenizer does not add it, `encode` prepends it, as a special token like any other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Sequence

from langneurons.config import DEFAULT_MAX_LENGTH
from langneurons.profiler.architectures import arch_spec

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
class BosRule:
    """What opens every sequence: the tokenizer's own BOS ("tokenizer"), one langneurons prepends
    because the model expects it and the tokenizer leaves it out ("langneurons"), none because the
    model expects none ("none"), or none although it expects one ("off": --no-add-bos)."""

    source: Literal["tokenizer", "langneurons", "none", "off"]
    token_id: int | None = None
    reason: str = ""              # why the model expects a BOS ("langneurons", "off")

    @property
    def prepend(self) -> int | None:
        """The id `encode` puts in front of every sequence, or None."""
        return self.token_id if self.source == "langneurons" else None

    def record(self) -> str:
        """The store's `bos` attribute."""
        return {"tokenizer": "added by the tokenizer",
                "langneurons": f"added by langneurons (token id {self.token_id}): {self.reason}, and the "
                               "tokenizer leaves it out",
                "none": "none: neither the model family, the tokenizer's config nor its chat template asks for one",
                "off": f"not added (--no-add-bos), although {self.reason}"}[self.source]


def bos_rule(tokenizer, model_config, *, add: bool) -> BosRule:
    """The BOS rule for this tokenizer and model (`add`: the counting section's add_bos).

    The tokenizer adds a BOS when it opens a probe's encoding. Else the model expects one when its
    family is trained with one (`ArchSpec.bos`: Gemma, Mistral), the tokenizer declares
    `add_bos_token` without doing it (GGUF conversions), or its chat template writes bos_token."""
    cfg = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    bos_id = tokenizer.bos_token_id
    if bos_id is None:
        bos_id = next((v for v in (getattr(cfg, "bos_token_id", None), getattr(model_config, "bos_token_id", None))
                       if isinstance(v, int) and not isinstance(v, bool)), None)
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    if bos_id is not None and probe[:1] == [bos_id]:
        return BosRule("tokenizer", bos_id)
    reason = _expected_bos(tokenizer, model_config.model_type)
    if reason is None:
        return BosRule("none")
    if not add:
        return BosRule("off", None, reason)
    if bos_id is None:
        raise ValueError(f"the model expects a BOS token ({reason}), but neither its tokenizer nor its config "
                         "names one: set the tokenizer's bos_token, or give --no-add-bos to profile without one")
    return BosRule("langneurons", bos_id, reason)


def _expected_bos(tokenizer, model_type: str) -> str | None:
    """Why this model expects a BOS opening every sequence, or None."""
    if arch_spec(model_type).bos:
        return f"{model_type} models are trained with a BOS opening every sequence"
    if getattr(tokenizer, "add_bos_token", None) is True or _declared(tokenizer, "add_bos_token") is True:
        return "the tokenizer's config sets add_bos_token"
    template = getattr(tokenizer, "chat_template", None)
    templates = template.values() if isinstance(template, dict) else [template]
    if any(isinstance(x, str) and "bos_token" in x for x in templates):
        return "its chat template writes bos_token"
    return None


def _declared(tokenizer, key: str):
    """`key` as the tokenizer's folder's tokenizer_config.json states it (None: not stated, or not a
    local folder). transformers 5 drops add_bos_token from the loaded tokenizer whenever a
    tokenizer.json exists (whose post-processor then decides), so the file is read as written."""
    import json
    from pathlib import Path

    f = Path(str(getattr(tokenizer, "name_or_path", "") or "")) / "tokenizer_config.json"
    try:
        return json.loads(f.read_text(encoding="utf-8")).get(key) if f.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None


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
           long_documents: str = "window", where: Sequence[str] | None = None, bos: int | None = None) -> Encoded:
    """Token ids of each sentence as the model sees them, and which tokens count.

    `bos` (`BosRule.prepend`): a token id put in front of every sentence that does not already
    start with it, as a special token (it opens every window too).

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
        if bos is not None and seq[:1] != [bos]:
            seq, special = [bos] + seq, [1] + special
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
                   long_documents: str, where: Sequence[str] | None = None, bos: int | None = None) -> list[int]:
    """Tokens each sentence contributes to the statistics: exactly what `encode` counts."""
    enc = encode(tokenizer, sentences, include_special_tokens=include_special_tokens, max_length=max_length,
                 long_documents=long_documents, where=where, bos=bos)
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
