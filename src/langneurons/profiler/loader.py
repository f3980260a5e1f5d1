"""The one model loader: every command that loads weights in this process (the HF backend of
`profile`, `ablate`, and the coming `steer`) loads them here, from a `plan.ModelPlan`, with the
plan's trust_remote_code policy, dtype and device, and feeds them through `padded_batches`.
(vLLM loads its own weights in its workers, from the same plan.) A GGUF file is converted once
into a model folder both backends load (`convert_gguf`: the demos').
"""

from __future__ import annotations

import functools
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from langneurons.profiler.tokens import batches_by_budget

if TYPE_CHECKING:
    from langneurons.profiler.plan import ModelPlan

log = logging.getLogger(__name__)


def load_tokenizer(model: str, revision: str | None, trust_remote_code: bool):
    """The model's tokenizer. Loaded once per set of tokenizer files: a folder whose tokenizer
    files changed since (its fingerprint) is loaded again."""
    from langneurons.profiler.checkpoint import tokenizer_fingerprint

    return _tokenizer(model, revision, trust_remote_code, tokenizer_fingerprint(model, revision))


@functools.lru_cache(maxsize=4)
def _tokenizer(model: str, revision: str | None, trust_remote_code: bool, _fingerprint: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model, revision=revision, trust_remote_code=trust_remote_code)


def load_model(plan: ModelPlan) -> torch.nn.Module:
    """The plan's model, in eval mode on its device and in its dtype; its architecture must be the
    plan's (a model folder replaced since the plan was made is refused)."""
    from transformers import AutoModelForCausalLM

    # a MoE model runs its experts with transformers' eager per-expert loop: the computation the
    # profile counted (profiler/moe.py), and one that runs on every device and any expert width
    # (the grouped-matmul default needs 16-byte-aligned strides)
    extra = {"experts_implementation": "eager"} if plan.moe is not None else {}
    model = AutoModelForCausalLM.from_pretrained(plan.model, revision=plan.revision, dtype=plan.torch_dtype,
                                                 trust_remote_code=plan.trust_remote_code, **extra)
    if model.config.model_type != plan.architecture:
        raise RuntimeError(f"{plan.model} now holds a {model.config.model_type} model, the run was planned for "
                           f"{plan.architecture}: the folder changed during the run")
    return model.to(plan.torch_device).eval()


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Write the GGUF file's model to `out` as float32 safetensors with its tokenizer, once: the
    folder is complete or absent (written beside it, then renamed), so an interrupted conversion is
    redone. transformers loads GGUF (dequantising) but cannot save a GGUF-loaded model, so the
    weights are copied into a fresh model of the same class, which is saved."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gg = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = gg.config
    if hasattr(config, "quantization_config"):  # the saved copy is plain float: say nothing of GGUF
        del config.quantization_config
    fresh = type(gg)(config)
    missing, unexpected = fresh.load_state_dict(gg.state_dict(), strict=False)
    if unexpected or any(not k.endswith("lm_head.weight") for k in missing):
        raise RuntimeError(f"converting {gguf}: missing {missing}, unexpected {unexpected}")
    if missing:  # tied embeddings: lm_head shares the input embedding
        fresh.tie_weights()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def pad_id(tokenizer) -> int:
    """The id padded positions get: the tokenizer's pad token, else EOS, else 0. Padded positions
    are masked out of attention and never counted, so any id will do."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id or 0


@dataclass(frozen=True, slots=True)
class Batch:
    rows: list[int]          # which sequences, in batch order
    ids: torch.Tensor        # [B, T] int64 on the device, right-padded
    attention: torch.Tensor  # [B, T] int64 on the device: 1 for real tokens
    marks: torch.Tensor | None  # [B, T] int32 on the host: each token's mark, -1 for padding


def padded_batches(seqs: Sequence[list[int]], budget: int, pad: int, device: torch.device,
                   marks: Sequence[Sequence[int]] | None = None) -> Iterator[Batch]:
    """Right-padded batches of `seqs` whose padded size fits `budget` tokens
    (`tokens.batches_by_budget`: longest first, deterministic); `marks` (one int per token, e.g. a
    token's language or -1 for a special token) are padded with -1 alongside."""
    for rows in batches_by_budget([len(s) for s in seqs], budget):
        width = max(len(seqs[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        out = None if marks is None else torch.full((len(rows), width), -1, dtype=torch.int32)
        for r, i in enumerate(rows):
            n = len(seqs[i])
            ids[r, :n] = torch.tensor(seqs[i])
            attn[r, :n] = 1
            if out is not None:
                out[r, :n] = torch.tensor(marks[i], dtype=torch.int32)
        yield Batch(rows, ids.to(device, non_blocking=True), attn.to(device, non_blocking=True), out)
