"""Generation on the HF backend (`HFGenerator`; vLLM's is `steering.vllm.VLLMGenerator`), and the
fluency of what was generated.

Prompts open with the profile's BOS rule (`plan.bos`), are left-padded into batches of
--batch-size in prompt order (the same batches in every condition, so conditions differ only by
their interventions), and decode greedily unless a temperature is given: then with plain
temperature sampling (no top-k or top-p from the model's generation config), reseeded per
condition. Each output stops before the first end-of-sequence token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from langneurons.profiler import loader


@dataclass(frozen=True, slots=True)
class Decoding:
    max_new_tokens: int
    temperature: float
    seed: int
    batch_size: int


def encode_prompts(tokenizer, prompts: Sequence[str], bos: int | None) -> list[list[int]]:
    """Token ids of each prompt as the profile fed its sentences: the BOS rule's id first, when it adds one."""
    enc = [list(tokenizer(p).input_ids) for p in prompts]
    if bos is not None:
        enc = [e if e[:1] == [bos] else [bos] + e for e in enc]
    return enc


def stop_ids(plan, tokenizer) -> list[int]:
    """The ids that end a generation: the model's generation config's EOS ids and the tokenizer's
    (vLLM stops at both; so does the HF backend here)."""
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(plan.model, revision=plan.revision).eos_token_id
    except OSError:  # no generation_config.json
        eos = None
    ids = set() if eos is None else set(eos if isinstance(eos, (list, tuple)) else [eos])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(int(x) for x in ids)


def cut(ids: Sequence[int], stops: Sequence[int]) -> list[int]:
    """The generated ids before the first stop id."""
    return next((list(ids[:i]) for i, t in enumerate(ids) if t in stops), list(ids))


class HFGenerator:
    """Generation and fluency on the HF backend: the interventions as hooks in the loaded model."""

    def __init__(self, loaded, site: str):
        self.model, self.tokenizer, self.spec, self.site = loaded.model, loaded.tokenizer, loaded.plan.spec, site
        self.stops = stop_ids(loaded.plan, loaded.tokenizer)

    def generate(self, table, prompts: list[list[int]], decoding: Decoding) -> list[list[int]]:
        from langneurons.steering import hooks
        from langneurons.steering.neurons import ROUTER

        router = table["site"] == ROUTER
        with hooks.steered(self.model, self.spec, self.site, hooks.layer_ops(table[~router]),
                           hooks.layer_ops(table[router])):
            return generate(self.model, self.tokenizer, prompts, decoding, self.stops)

    def mean_logprob(self, prompts: list[list[int]], outputs: list[list[int]]) -> np.ndarray:
        return mean_logprob(self.model, self.tokenizer, prompts, outputs)

    def close(self) -> None:
        pass


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[list[int]], decoding: Decoding, stops: list[int]) -> list[list[int]]:
    """The generated ids of each prompt (without the prompt, cut before the first stop id)."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    pad = loader.pad_id(tokenizer)
    sample = decoding.temperature > 0
    cfg = GenerationConfig(max_new_tokens=decoding.max_new_tokens, min_new_tokens=0, do_sample=sample,
                           temperature=decoding.temperature if sample else None, top_k=0 if sample else None,
                           top_p=1.0 if sample else None, pad_token_id=pad, eos_token_id=stops or None)
    torch.manual_seed(decoding.seed)
    out: list[list[int]] = []
    for ids, attn in left_padded(prompts, decoding.batch_size, pad):
        gen = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), generation_config=cfg)
        out += [cut(row, stops) for row in gen[:, ids.shape[1]:].tolist()]
    return out


def left_padded(prompts: list[list[int]], batch_size: int, pad: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(ids, attention) [B, T] int64 on the host per batch of `batch_size` prompts in order, padded on
    the left: every prompt ends where generation starts."""
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        width = max(len(p) for p in batch)
        out.append((torch.tensor([[pad] * (width - len(p)) + p for p in batch]),
                    torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])))
    return out


@torch.inference_mode()
def mean_logprob(model, tokenizer, prompts: list[list[int]], outputs: list[list[int]], batch_tokens: int = 1024) -> np.ndarray:
    """Per output, the mean log-probability of its tokens given its prompt under `model` as it is
    called (the caller leaves it unsteered); NaN for an empty output. Logits are computed only at
    the positions that predict output tokens (`logits_to_keep`): a 262k-token vocabulary over
    every prompt position would take gigabytes."""
    device = next(model.parameters()).device
    seqs = [p + o for p, o in zip(prompts, outputs)]
    res = np.full(len(seqs), np.nan)
    keep = [i for i, o in enumerate(outputs) if o]
    for batch in loader.padded_batches([seqs[i] for i in keep], batch_tokens, loader.pad_id(tokenizer), device):
        rows = [keep[j] for j in batch.rows]
        lo = min(len(prompts[i]) for i in rows) - 1                       # first position predicting an output token
        hi = max(len(seqs[i]) for i in rows) - 1                          # one past the last
        logits = model(input_ids=batch.ids, attention_mask=batch.attention, use_cache=False,
                       logits_to_keep=torch.arange(lo, hi, device=device)).logits   # [B, hi - lo, V]
        logp = torch.log_softmax(logits.float(), -1)
        for r, i in enumerate(rows):
            n_p, n_o = len(prompts[i]), len(outputs[i])
            tgt = batch.ids[r, n_p:n_p + n_o]
            res[i] = float(logp[r, n_p - 1 - lo:n_p - 1 - lo + n_o].gather(-1, tgt.unsqueeze(-1)).mean())
    return res


def degenerate(ids: Sequence[int]) -> bool:
    """Half or more of the output's token 3-grams repeat an earlier one (outputs of under 3 tokens: no)."""
    grams = [tuple(ids[i:i + 3]) for i in range(len(ids) - 2)]
    return bool(grams) and (len(grams) - len(set(grams))) * 2 >= len(grams)
