"""Hugging Face transformers backend: any device, exact token accounting, hooks on the FFN sites.

`--compile` runs the base model under torch.compile. Its hooks are installed once, before the
first (compiling) forward, and reduce through the custom op the graph keeps (`profiler/ops.py`);
installing them per call would change what the compiled code guards on and recompile every time.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Sequence

import torch

from langneurons.config import ProfileConfig
from langneurons.kernels.dispatch import get_accumulate, get_fused, resolve
from langneurons.kernels.reference import Accumulator
from langneurons.profiler import fused, hooks, loader, moe, moe_layout, ops, sites, tokens
from langneurons.profiler.backends.base import describe
from langneurons.profiler.devices import dtype_name
from langneurons.profiler.plan import ModelPlan, model_plan
from langneurons.store.stats import Stats

log = logging.getLogger(__name__)


class HFBackend:
    """Profiles sentences with a transformers model; one instance loads the model once."""

    name = "hf"

    def __init__(self, cfg: ProfileConfig, plan: ModelPlan | None = None, *, model=None, tokenizer=None):
        """`plan`: the driver's (`plan.model_plan`); without one it is made here from cfg. Only
        cfg's counting section is read: everything about the model comes from the plan. `model`
        and `tokenizer`: a model already in memory to profile instead of loading the plan's (its
        plan from `plan.plan_in_memory`)."""
        if model is not None and (plan is None or tokenizer is None):
            raise ValueError("a model in memory needs its tokenizer and its plan (plan.plan_in_memory)")
        self.plan = plan = plan or model_plan(cfg.replace(backend="hf"))
        self.counting = counting = cfg.counting
        self.device = plan.torch_device
        self.tokenizer = tokenizer if tokenizer is not None else loader.load_tokenizer(plan.model, plan.revision,
                                                                                     plan.trust_remote_code)
        self.model = model if model is not None else loader.load_model(plan)
        if self.model.config.model_type != plan.architecture:  # a model given in memory
            raise ValueError(f"the model is a {self.model.config.model_type}, its plan says {plan.architecture}")
        spec = self.spec = plan.spec
        self.sites = sites.site_modules(self.model, spec, counting.site)
        self.layout = moe_layout.moe_layout(self.model, spec, expert_neurons=True)
        self.bos, self.max_length = plan.bos, plan.max_length
        # what this process actually loaded (the parameters' dtype, not what was asked for)
        self.info = describe(plan.model, plan.revision, plan.architecture, sites.num_layers(self.model, spec),
                             sites.ffn_width(self.model, spec), dtype_name(next(self.model.parameters()).dtype),
                             bos=self.bos.record(), moe=self.layout,
                             fingerprint=plan.fingerprint if model is not None else None)
        self.acc = Accumulator.zeros(1, self.info.n_layers, self.info.d_ff, counting.bin_edges,
                                     counting.threshold, self.device)
        self.kernel = resolve(plan.kernel, self.device)  # the plan's, or "auto" resolved on this GPU worker
        # --fused-mlp: the MLPs whose forward the fused kernel stands in for (else hooks)
        self.mlps = fused.fusable_mlps(self.model, spec) if plan.fused_mlp else None
        if self.mlps and self.kernel == "triton":  # it may only stand in for the MLP if exact here
            from langneurons.kernels import triton_fused
            for act in {type(m.act_fn): m.act_fn for m in self.mlps}.values():
                triton_fused.check_exact(act, plan.torch_dtype, self.device)
        self.state = hooks.HookState(self.acc, get_accumulate(self.kernel, self.device),
                                     compact=self.kernel == "reference" and self.mlps is None,
                                     fuse=get_fused(self.kernel, self.device) if self.mlps else None,
                                     site=counting.site)
        self.moe = None if self.layout is None else moe.MoeAccumulator.zeros(
            1, self.info.n_layers, self.layout.n_experts, counting.threshold, self.device, self.layout.expert_d_ff)
        self.pad_id = loader.pad_id(self.tokenizer)
        self.forward = self.model.base_model
        self._handles: list = []
        if plan.compiled:
            if self.layout is not None:
                raise ValueError("--compile does not count MoE models yet (their routing hooks are not "
                                 "traceable); profile them without --compile")
            ops.register(self.state)
            self._handles = hooks.install(self.sites, self.state)
            # dynamic: batches differ in shape; one graph serves them all
            self.forward = torch.compile(self.model.base_model, dynamic=True)

    @torch.inference_mode()
    def profile(self, sentences: Sequence[str]) -> Stats:
        enc = tokens.encode(self.tokenizer, sentences, include_special_tokens=self.counting.include_special_tokens,
                            max_length=self.max_length, long_documents=self.counting.long_documents,
                            bos=self.bos.prepend)
        self.acc.zero_()
        installed = (contextlib.nullcontext() if self.plan.compiled  # installed once, in its graph
                     else fused.installed(self.mlps, self.state) if self.mlps is not None
                     else hooks.installed(self.sites, self.state))
        with contextlib.ExitStack() as stack:
            stack.enter_context(installed)
            if self.moe is not None:
                self.moe.zero_()
                stack.enter_context(moe.installed(self.model, self.spec, self.state, self.moe))
            marks = [[0 if c else -1 for c in counted] for counted in enc.counted]  # -1: not counted
            for batch in loader.padded_batches(enc.input_ids, self.counting.batch_tokens, self.pad_id, self.device,
                                               marks):
                self.state.set_batch(batch.marks.reshape(-1), self.device)
                self.acc.count_tokens(self.state.token_lang)
                # The base model (no LM head): logits are never needed, and the vocab projection
                # is a fifth of a small multilingual model's FLOPs.
                self.forward(input_ids=batch.ids, attention_mask=batch.attention, use_cache=False)
        self.state.clear()
        stats = self.acc.to_stats(0)
        if self.moe is not None:
            stats.moe = self.moe.to_arrays(0)
        return stats

    def close(self) -> None:
        hooks.remove(self._handles)
        ops.release(self.state)
        del self.model, self.forward
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
