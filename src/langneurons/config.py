"""The run configuration: typed sections, one flag per field, every value checked before anything runs.

    ProfileConfig
      corpus    CorpusConfig    what to read            --corpus, --corpus-format, --languages, ...
      counting  CountingConfig  what is counted         --site, --threshold, --bin-edges, ...
      backend   BackendConfig   the model and its run   --model, --backend, --dtype, --kernel, ...
      cluster   ClusterConfig   where it runs           --workers, --address, ...
      store     StoreConfig     where results go        --out, --resume, --overwrite

The counting section is exactly what changes the numbers: it goes into the store's identity
(`store.schema.identity`), and a resumed run must match it; every other section may differ
between an interrupted run and its resume.

Each field declares its flag name, help text and lower bound in its metadata (`options.opt`); the
CLI (`cli.py`) is built from these and the fields' type hints, and `options.check_section`
validates every field of every section from the same declarations (path fields come out with `~` and $VARS
expanded, float fields as floats). Choices are `Literal` types. Users, the CLI
and config files speak in flat flag names (`ProfileConfig.from_flags(model=..., threshold=0.5)`,
a YAML mapping of `threshold: 0.5`); `to_flags()` gives them back.
"""

from __future__ import annotations

import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from langneurons.options import Spec, check_section, expand_path, opt, specs_of
from langneurons.store.schema import (
    DEFAULT_EDGES, LANGUAGE_CODE_RULE, PARTIAL_MAX_TOKENS, language_code_ok, validate_edges,
)

Site = Literal["gate", "down_in"]
BackendName = Literal["hf", "vllm"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
Kernel = Literal["auto", "reference", "triton", "numba"]
CorpusFormat = Literal["auto", "textdir", "tsv", "jsonl", "tmx", "parquet", "arrow"]
LongDocuments = Literal["window", "truncate", "refuse"]
KeepPartials = Literal["counts", "all", "none"]

SITES: tuple[str, ...] = typing.get_args(Site)
KERNELS: tuple[str, ...] = typing.get_args(Kernel)
FORMATS: tuple[str, ...] = typing.get_args(CorpusFormat)
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DEFAULT_MAX_LENGTH = 512



@dataclass(frozen=True, kw_only=True)
class CorpusConfig:
    corpus: str | None = opt(None, """The corpus: a directory of per-language files or folders (<lang>.txt,
        <lang>.jsonl, <lang>.parquet, <lang>/*.parquet, <lang>/ saved with datasets' save_to_disk), a .tsv, a
        .jsonl, a .parquet or save_to_disk folder with one column per language, or .tmx/.zip files
        (comma-separated). None: the bundled TICO-19 demo corpus.""", path="list")
    format: CorpusFormat = opt("auto", "Corpus format: auto, textdir, tsv, jsonl, tmx, parquet or arrow.",
                               flag="corpus_format")
    languages: list[str] | None = opt(None, "Languages to profile (default: all in the corpus).")
    max_sentences: int | None = opt(None, "Profile at most the first N rows per language.", min=1)
    unaligned: bool = opt(False, """Monolingual corpora: each language's rows are its own (any number,
        nothing aligned), read as a stream; empty rows are skipped. The corpus must be a directory of
        per-language files or folders.""")
    max_tokens_per_language: int | None = opt(None, """Token budget: profile, per language, the longest
        prefix of rows whose counted tokens sum to at most N (the same rows whatever the workers or
        resumes; reported per language and recorded in the results).""", min=1)
    text_field: str = opt("text", "The text field of per-language .jsonl rows, and the text column of "
                                  "per-language Parquet/Arrow files.")

    def __post_init__(self) -> None:
        check_section(self)
        if self.languages is not None:
            if not self.languages:
                raise ValueError("--languages is empty: give codes such as en,fr (or leave it out for all)")
            for code in self.languages:
                if not language_code_ok(code):
                    raise ValueError(f"--languages: invalid language code {code!r}; {LANGUAGE_CODE_RULE}")
            if len({c.casefold() for c in self.languages}) != len(self.languages):
                raise ValueError(f"--languages lists a code twice: {','.join(self.languages)}")


@dataclass(frozen=True, kw_only=True)
class CountingConfig:
    """Everything that changes the numbers (the store's identity holds each field)."""

    site: Site = opt("gate", """FFN site: 'gate' = act(gate projection) as LAPE counts; 'down_in' = the down
        projection's input.""")
    threshold: float = opt(0.0, "A neuron fires on a token when its activation is > threshold.")
    bin_edges: list[float] = opt(doc="Histogram edges (strictly increasing); the outer bins are open-ended.",
                                 factory=lambda: list(DEFAULT_EDGES))
    include_special_tokens: bool = opt(False, "Also count tokenizer-added special tokens (BOS/EOS). Padding never counts.")
    add_bos: bool = opt(True, """Where the model expects a BOS token and its tokenizer leaves it out (Gemma and
        Mistral families, tokenizers declaring add_bos_token, chat templates writing bos_token; common in GGUF
        conversions), add it to every sequence as a special token; the store's `bos` says what was done.
        --no-add-bos feeds the tokenizer's output as is, e.g. to reproduce counts another tool made that way.""")
    max_length: int | None = opt(None, """Longest sequence fed to the model, in tokens; longer rows are
        handled by --long-documents. Default: 512, or the model's position limit if lower; more than the
        model's limit is refused.""", min=1)
    long_documents: LongDocuments = opt("window", """A row longer than --max-length: 'window' profiles it as
        consecutive windows (each its own forward pass from position 0, with the tokenizer's special tokens;
        every text token counted once), 'truncate' cuts it, 'refuse' stops before anything runs.""")
    # batch_tokens changes float sums in the last bits (batch composition), and a resumed run
    # promises totals bit-identical to an uninterrupted one; the shard plan fixes the partials
    # (and the float order of the totals, which are summed shard by shard).
    batch_tokens: int = opt(8192, "Token budget per forward pass (padded tokens included).", min=1)
    # Shards are the unit of scheduling, retry, resume and bootstrap. The defaults come from
    # benchmarks/bench_store.py: at 1M tokens an 8B model's shard commits in well under 1% of the
    # time a GPU takes to profile it, a lost shard costs about half a GPU-minute, and 100M tokens
    # per language make 100 bootstrap units; small corpora still get min_shards units.
    shard_tokens: int = opt(1_000_000, """Counted tokens per shard (planned from per-row token counts,
        taken before the run): each language gets ceil(tokens / N) shards of about equal tokens, at
        least --min-shards.""", min=1)
    min_shards: int = opt(32, """At least this many shards per language (fewer only when it has fewer
        rows), so bootstrap intervals have units to resample.""", min=1)
    shard_size: int | None = opt(None, """Plan shards by rows instead: this many rows per shard
        (--shard-tokens and --min-shards are then unused, and no tokens are counted before the run).""",
        min=1)

    def __post_init__(self) -> None:
        check_section(self)
        if self.shard_tokens > PARTIAL_MAX_TOKENS:
            raise ValueError(f"--shard-tokens {self.shard_tokens:,} is more than a shard may hold "
                             f"({PARTIAL_MAX_TOKENS:,}: its counts are stored as int32); give a smaller value")
        if not math.isfinite(self.threshold):
            raise ValueError(f"--threshold {self.threshold} is not a finite number: a neuron fires when its "
                             "activation is > threshold; give e.g. --threshold 0")
        try:
            object.__setattr__(self, "bin_edges", [float(e) for e in validate_edges(self.bin_edges)])
        except ValueError as e:
            raise ValueError(f"--bin-edges: {e}") from None


@dataclass(frozen=True, kw_only=True)
class BackendConfig:
    model: str | None = opt(None, "Local model directory or hub id (hub needs network). None: the bundled demo model.",
                            path="one")
    revision: str | None = opt(None, "Hub revision (commit, tag or branch) to pin; recorded in the results.")
    name: BackendName = opt("hf", "Inference backend: 'hf' (transformers, any device) or 'vllm' (throughput).",
                            flag="backend")
    dtype: DType = opt("auto", "Model dtype: auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16 or float16.")
    device: str = opt("auto", "Torch device for the hf backend: auto (cuda if available), cpu, cuda, cuda:1, ...")
    kernel: Kernel = opt("auto", """Reduction kernel: auto (Triton on CUDA, numba on the CPU), reference (the
        plain-torch spec), triton or numba.""")
    fused_mlp: bool = opt(False, """SiLU-gated MLPs (llama, mistral, qwen2, qwen3, cohere, cohere2, olmo2), hf backend: compute
        act(gate)*up and the site's statistics in one kernel pass, so the activations are read once. Same
        numbers; pays off on GPUs.""")
    trust_remote_code: bool = opt(False, "Allow model code from the hub (off unless you ask for it).")
    tensor_parallel: int = opt(1, "vLLM tensor-parallel size (the neuron axis is re-assembled in model order).",
                               flag="vllm_tensor_parallel", min=1)
    gpu_memory_utilization: float = opt(0.5, "Fraction of GPU memory vLLM may take.",
                                        flag="vllm_gpu_memory_utilization")
    vllm_eager: bool = opt(False, """vLLM backend: run the engine eager (no torch.compile, no CUDA graphs), with the
        hooks installed after it starts. Default: vLLM's own compilation, the hooks compiled into its graph.
        MoE models run eager either way (routing is read from a router callback).""")
    compile: bool = opt(False, """hf backend: run the model under torch.compile, the hooks compiled into its
        graph (same counts; pays off on GPUs and long runs: compiling takes a while, once per batch shape).""")

    def __post_init__(self) -> None:
        check_section(self)
        if not DEVICE.match(self.device):
            raise ValueError(f"--device {self.device!r} is not a torch device: use auto, cpu, cuda, cuda:N or mps")
        if self.fused_mlp and self.name != "hf":
            raise ValueError(f"--fused-mlp replaces transformers MLP modules: it needs backend 'hf' (--backend hf), not "
                             f"{self.name!r} (vLLM runs its own fused SiLU-and-mul kernel)")
        if self.compile and self.name != "hf":
            raise ValueError("--compile is the hf backend's: the vLLM backend compiles by default (--vllm-eager "
                             "turns that off)")
        if self.compile and self.fused_mlp:
            raise ValueError("--compile and --fused-mlp cannot be combined: the fused kernel is not traceable; "
                             "drop one (torch.compile fuses the MLP's elementwise work itself)")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"--vllm-gpu-memory-utilization must be in (0, 1], got {self.gpu_memory_utilization}")


@dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    workers: int = opt(0, "Ray workers (one per GPU when GPUs exist). 0: run in this process without Ray.", min=0)
    threads_per_worker: int | None = opt(None, "CPU threads per worker (default: all cores / workers).", min=1)
    address: str | None = opt(None, """Join an existing Ray cluster ('auto' or 'ray://host:port') instead of
        starting a local one.""")
    max_retries: int = opt(3, "Times a failed shard is retried before the run stops with an error naming it.", min=0)

    def __post_init__(self) -> None:
        check_section(self)


@dataclass(frozen=True, kw_only=True)
class StoreConfig:
    out: str = opt("results/langneurons.zarr", "Results store: a local path or an fsspec URL (s3://..., gs://...).",
                   path="one")
    resume: bool = opt(False, "Continue an interrupted run in `out`, skipping committed shards.")
    overwrite: bool = opt(False, "Delete an existing store at `out` first.")
    # Measured in benchmarks/bench_store.py: "counts" keeps an 8B x 7 languages x 100M-token
    # store small (the histograms are most of a partial) and is all bootstrap over LAPE reads.
    keep_partials: KeepPartials | None = opt(None, """Per-shard partials kept once the run is complete:
        'counts' (n_tokens, n_fired, n_nonfinite: what bootstrap resamples; the default for a new run),
        'all' (also sums and histograms, for audit) or 'none'. Until the run completes every partial is
        kept. A --resume of a complete store keeps what it kept unless this asks for less.""")

    def __post_init__(self) -> None:
        if isinstance(self.out, str) and not self.out.strip():
            raise ValueError("--out is empty: give a path for the results store, e.g. --out results/run.zarr")
        check_section(self)
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite contradict each other: choose one")


SECTIONS: dict[str, type] = {"corpus": CorpusConfig, "counting": CountingConfig, "backend": BackendConfig,
                             "cluster": ClusterConfig, "store": StoreConfig}
SECTION_SPECS: dict[type, tuple[Spec, ...]] = {cls: specs_of(cls, name) for name, cls in SECTIONS.items()}
#: Every flag, in CLI order, by flat name.
SPECS: dict[str, Spec] = {s.flag: s for specs in SECTION_SPECS.values() for s in specs}


@dataclass(frozen=True, kw_only=True)
class ProfileConfig:
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    counting: CountingConfig = field(default_factory=CountingConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    store: StoreConfig = field(default_factory=StoreConfig)

    def __post_init__(self) -> None:
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"ProfileConfig.{name} must be a {cls.__name__}; for flat flags use "
                                "ProfileConfig.from_flags(...)")

    @classmethod
    def from_flags(cls, **flags: Any) -> "ProfileConfig":
        """Build from flat flag names (model=..., threshold=..., out=...), as the CLI and config
        files give them; each section checks its fields as it is built."""
        unknown = sorted(set(flags) - set(SPECS))
        if unknown:
            raise ValueError(f"unknown fields {unknown}; known: {sorted(SPECS)}")
        parts: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for k, v in flags.items():
            parts[SPECS[k].section][SPECS[k].name] = v
        return cls(**{name: SECTIONS[name](**kw) for name, kw in parts.items()})

    def to_flags(self) -> dict[str, Any]:
        """Every field by its flat flag name (plain JSON values): the `config` the store records."""
        return {s.flag: _plain(getattr(getattr(self, s.section), s.name)) for s in SPECS.values()}

    def replace(self, **flags: Any) -> "ProfileConfig":
        """A copy with some fields changed, by flat flag name (re-checked)."""
        d = self.to_flags()
        d.update(flags)
        return ProfileConfig.from_flags(**d)

    @classmethod
    def field_names(cls) -> list[str]:
        """The flat flag names (each is a CLI flag and a config-file key)."""
        return list(SPECS)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> "ProfileConfig":
        """Load a YAML or JSON config file of flat fields (`configfile`); `overrides` (e.g. from the
        CLI) win. Every problem is one error naming the file, except those of the overrides."""
        from langneurons.configfile import read_config_file

        p = Path(expand_path(str(path)))
        data = read_config_file(p)
        unknown = sorted(set(data) - set(SPECS), key=str)
        if unknown:
            raise ValueError(f"config file {p} has unknown fields {unknown}; known: {sorted(SPECS)}")
        try:
            return cls.from_flags(**{**data, **overrides})
        except ValueError as e:
            if not overrides:
                raise ValueError(f"config file {p}: {e}") from None
            try:  # whose value is wrong: the file's (those no flag replaces), or a flag's?
                cls.from_flags(**{k: v for k, v in data.items() if k not in overrides})
            except ValueError as own:
                raise ValueError(f"config file {p}: {own}") from None
            raise


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, (list, tuple)) else v


#: Flags that do not change the numbers: a store may be resumed with different values. Derived,
#: not listed: everything outside the counting section, and the corpus/model, which the identity
#: records by fingerprint instead of by path.
RUN_ONLY_FIELDS = frozenset(s.flag for s in SPECS.values() if s.section != "counting")
