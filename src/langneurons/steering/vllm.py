"""Generation and fluency on the vLLM backend: one engine (`profiler.backends.vllm.start_engine`,
prefix caching off), its ranks' steering hooks installed once (`steering.vllm_worker`): while the
model loads, before vLLM compiles it (compiled, the default), or by `apply_model` into an eager
engine (--vllm-eager, and MoE models). Each condition's operations are written into the hooks'
device buffers before its generation and cleared after it; the check that every forward pass of
every rank ran every hooked layer's op follows each generation.

Prompts go in as token ids (`TokensPrompt`), as the HF backend feeds them (the BOS rule applied);
vLLM schedules them itself, so --batch-size does not apply. Sampling is greedy at temperature 0,
else plain temperature sampling (no top-k, top-p 1) seeded per request with --seed. Fluency is
the unsteered engine's log-probability of each output token (`prompt_logprobs` over prompt +
output).
"""

from __future__ import annotations

import functools

import numpy as np

from langneurons.profiler.backends.vllm import apply_in_workers, start_engine
from langneurons.steering import hooks, vllm_worker
from langneurons.steering.generate import Decoding, cut, stop_ids
from langneurons.steering.neurons import ROUTER


class VLLMGenerator:
    def __init__(self, loaded, site: str):
        """An engine steering `site` of the plan's model (fixed for the engine's life: its hooks are
        installed for it)."""
        plan = loaded.plan
        self.plan, self._site, self.tokenizer = plan, site, loaded.tokenizer
        self.stops = stop_ids(plan, loaded.tokenizer)
        vllm_worker.check_site(site, plan.activation)
        if plan.d_ff == 0:
            raise ValueError(f"{plan.model} has no dense FFN layer to steer on --backend vllm")
        arguments = dict(model_type=plan.architecture, site=site, act=plan.activation)
        # a position for every prompt token and every generated one, plus the one vLLM samples into
        self.llm = start_engine(plan, max_model_len=plan.max_length + 1,
                                max_num_batched_tokens=max(4096, plan.max_length + 1),
                                hooks=("steer", arguments) if plan.compiled else None)
        try:
            if not plan.compiled:
                apply_in_workers(self.llm, functools.partial(vllm_worker.install, **arguments))
            self.ranks = apply_in_workers(self.llm, vllm_worker.installed)
            if any(r.compiled is not plan.compiled for r in self.ranks):
                raise RuntimeError("internal: the vLLM ranks' steering hooks are not the plan's "
                                   f"({'compiled' if plan.compiled else 'eager'})")
        except BaseException:
            self.close()
            raise

    @property
    def site(self) -> str:
        return self._site

    def set_operations(self, table) -> None:
        """One condition's operations (`neurons.operations`' table) in every rank's hooks, until `clear`."""
        if (table["site"] == ROUTER).any():
            raise ValueError("--experts steers routing on --backend hf only")
        bad = table[(table["neuron"] < 0) | (table["neuron"] >= self.plan.d_ff)]
        if len(bad):
            raise ValueError(f"layer {int(bad['layer'].iloc[0])}: neuron {int(bad['neuron'].iloc[0])} is not one of "
                             f"the model's {self.plan.d_ff} FFN neurons")
        operations = functools.partial(vllm_worker.set_operations, layer_ops=hooks.layer_ops(table))
        n_ops = apply_in_workers(self.llm, operations)
        if sum(n_ops) != len(table):
            self.clear()   # never leave a partial condition installed
            raise RuntimeError(f"the vLLM ranks installed {sum(n_ops)} operations of {len(table)}: "
                               "their slices of d_ff do not cover the model's neurons")

    def clear(self) -> None:
        """No operations: the unsteered model."""
        apply_in_workers(self.llm, vllm_worker.clear)

    def generate(self, table, prompts: list[list[int]], decoding: Decoding) -> list[list[int]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        sample = decoding.temperature > 0
        params = SamplingParams(max_tokens=decoding.max_new_tokens, temperature=decoding.temperature if sample else 0.0,
                                top_k=0, top_p=1.0, seed=decoding.seed if sample else None,
                                stop_token_ids=self.stops, detokenize=False)
        try:
            self.set_operations(table)
            res = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
            counts = apply_in_workers(self.llm, vllm_worker.applied)
        finally:
            self.clear()
        for rank, c in enumerate(counts):
            if c.n_applied != c.passes * c.n_layers:
                raise RuntimeError(f"vLLM rank {rank} ran {c.passes} forward passes, but its hooked layers applied "
                                   f"their operations {c.n_applied} times, not {c.passes} x {c.n_layers}: a pass "
                                   "bypassed a hooked module, so some tokens may have been generated unsteered. "
                                   "Please report the model and vLLM version; --backend hf steers it")
        return [cut(r.outputs[0].token_ids, self.stops) for r in res]

    def mean_logprob(self, prompts: list[list[int]], outputs: list[list[int]]) -> np.ndarray:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        res = np.full(len(prompts), np.nan)
        keep = [i for i, o in enumerate(outputs) if o]
        if not keep:
            return res
        got = self.llm.generate([TokensPrompt(prompt_token_ids=prompts[i] + outputs[i]) for i in keep],
                                SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False),
                                use_tqdm=False)
        for i, r in zip(keep, got):
            n_p, seq = len(prompts[i]), prompts[i] + outputs[i]
            res[i] = float(np.mean([r.prompt_logprobs[t][seq[t]].logprob for t in range(n_p, len(seq))]))
        return res

    def close(self) -> None:
        del self.llm
