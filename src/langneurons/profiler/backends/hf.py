"""Hugging Face transformers backend: any device, exact token accounting, hooks on the FFN sites."""

from __future__ import annotations

import contextlib
import logging
from typing import Sequence

import torch

from langneurons.config import BackendConfig, ProfileConfig
from langneurons.kernels.dispatch import get_accumulate, get_fused, resolve
from langneurons.kernels.reference import Accumulator
from langneurons.profiler import architectures, fused, hooks, moe, moe_layout, sites, tokens
from langneurons.profiler.backends.base import describe
from langneurons.profiler.devices import dtype_name, placement
from langneurons.store.stats import Stats

log = logging.getLogger(__name__)

def load_model(cfg: BackendConfig, device: torch.device, dtype: torch.dtype):
    """Load (tokenizer, model) in eval mode on `device`; the architecture must be in the sites table."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kw = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    try:
        mcfg = AutoConfig.from_pretrained(cfg.model, **kw)
    except OSError as e:
        raise FileNotFoundError(f"cannot load a model config from {cfg.model!r}: {e}. Give a local "
                                "model directory (with config.json) or a hub id with network access") from e
    architectures.arch_spec(mcfg.model_type)  # unsupported architectures fail before the weights load
    tok = AutoTokenizer.from_pretrained(cfg.model, **kw)
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype, **kw)
    model.to(device).eval()
    return tok, model


class HFBackend:
    """Profiles sentences with a transformers model; one instance loads the model once."""

    name = "hf"

    def __init__(self, cfg: ProfileConfig):
        self.counting = counting = cfg.counting
        b = cfg.backend
        self.device, dtype = placement(b.device, b.dtype)
        self.tokenizer, self.model = load_model(b, self.device, dtype)
        arch = self.model.config.model_type
        self.arch = arch
        self.sites = sites.site_modules(self.model, arch, counting.site)
        self.layout = moe_layout.moe_layout(self.model, arch, expert_neurons=True)
        # what this process actually loaded (the parameters' dtype, not what was asked for)
        self.bos = tokens.bos_rule(self.tokenizer, self.model.config, add=counting.add_bos)
        self.info = describe(b.model, b.revision, arch, sites.num_layers(self.model, arch),
                             sites.ffn_width(self.model, arch), dtype_name(next(self.model.parameters()).dtype),
                             bos=self.bos.record(), moe=self.layout)
        self.max_length = tokens.resolve_max_length(counting.max_length, tokens.position_limit(self.model.config),
                                                    "hf", quiet=True)
        self.acc = Accumulator.zeros(1, self.info.n_layers, self.info.d_ff, counting.bin_edges,
                                     counting.threshold, self.device)
        self.kernel = resolve(b.kernel, self.device)
        # --fused-mlp: the MLPs whose forward the fused kernel stands in for (else hooks)
        self.mlps = fused.fusable_mlps(self.model, arch) if b.fused_mlp else None
        if self.mlps and self.kernel == "triton":  # it may only stand in for the MLP if exact here
            from langneurons.kernels import triton_fused
            for act in {type(m.act_fn): m.act_fn for m in self.mlps}.values():
                triton_fused.check_exact(act, dtype, self.device)
        self.state = hooks.HookState(self.acc, get_accumulate(self.kernel, self.device),
                                     compact=self.kernel == "reference" and self.mlps is None,
                                     fuse=get_fused(self.kernel, self.device) if self.mlps else None,
                                     site=counting.site)
        self.moe = None if self.layout is None else moe.MoeAccumulator.zeros(
            1, self.info.n_layers, self.layout.n_experts, counting.threshold, self.device, self.layout.expert_d_ff)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:  # padded positions are masked out, so any id will do
            self.pad_id = self.tokenizer.eos_token_id or 0

    @torch.inference_mode()
    def profile(self, sentences: Sequence[str]) -> Stats:
        enc = tokens.encode(self.tokenizer, sentences, include_special_tokens=self.counting.include_special_tokens,
                            max_length=self.max_length, long_documents=self.counting.long_documents,
                            bos=self.bos.prepend)
        self.acc.zero_()
        installed = (fused.installed(self.mlps, self.state) if self.mlps is not None
                     else hooks.installed(self.sites, self.state))
        with contextlib.ExitStack() as stack:
            stack.enter_context(installed)
            if self.moe is not None:
                self.moe.zero_()
                stack.enter_context(moe.installed(self.model, self.arch, self.state, self.moe))
            for batch in tokens.batches_by_budget([len(s) for s in enc.input_ids], self.counting.batch_tokens):
                ids, attn, lang = self._pad([enc.input_ids[i] for i in batch], [enc.counted[i] for i in batch])
                self.state.set_batch(lang.reshape(-1), self.device)
                self.acc.count_tokens(self.state.token_lang)
                # The base model (no LM head): logits are never needed, and the vocab projection
                # is a fifth of a small multilingual model's FLOPs.
                self.model.base_model(input_ids=ids, attention_mask=attn, use_cache=False)
        self.state.clear()
        stats = self.acc.to_stats(0)
        if self.moe is not None:
            stats.moe = self.moe.to_arrays(0)
        return stats

    def _pad(self, seqs: list[list[int]], counted: list[list[bool]]):
        """Right-pad one batch (ids and mask on the device); token_lang, on the host, is 0 for
        counted tokens and -1 for special tokens and padding."""
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        lang = torch.full((len(seqs), width), -1, dtype=torch.int32)
        for r, (s, c) in enumerate(zip(seqs, counted)):
            ids[r, : len(s)] = torch.tensor(s)
            attn[r, : len(s)] = 1
            lang[r, : len(s)] = torch.where(torch.tensor(c), 0, -1)
        return ids.to(self.device, non_blocking=True), attn.to(self.device, non_blocking=True), lang

    def close(self) -> None:
        del self.model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
