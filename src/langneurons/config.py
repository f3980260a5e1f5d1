"""The run configuration: one typed dataclass, filled from defaults, a config file and the CLI.

Each field's docstring-comment is its CLI help. `__post_init__` rejects bad values naming the field.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from langneurons.store.schema import DEFAULT_EDGES, validate_edges

BACKENDS = ("hf", "vllm")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(kw_only=True, slots=True)
class ProfileConfig:
    # --- what to profile ---------------------------------------------------------------------
    model: str | None = None
    """Local model directory or hub id (hub needs network). None: the bundled demo model."""
    revision: str | None = None
    """Hub revision (commit, tag or branch) to pin; recorded in the results."""
    corpus: str | None = None
    """Parallel corpus: a directory of <lang>.txt, a .tsv, a .jsonl, or .tmx/.zip files (comma-separated). None: the bundled TICO-19 demo corpus."""
    corpus_format: str = "auto"
    """Corpus format: auto, textdir, tsv, jsonl or tmx."""
    languages: list[str] | None = None
    """Languages to profile (default: all in the corpus)."""
    max_sentences: int | None = None
    """Profile at most this many aligned sentences per language (the first N)."""
    out: str = "results/langneurons.zarr"
    """Results store: a local path or an fsspec URL (s3://..., gs://...)."""
    # --- what to count -----------------------------------------------------------------------
    site: str = "gate"
    """FFN site: 'gate' = act(gate projection) as LAPE counts; 'down_in' = the down projection's input."""
    threshold: float = 0.0
    """A neuron fires on a token when its activation is > threshold."""
    bin_edges: list[float] = field(default_factory=lambda: list(DEFAULT_EDGES))
    """Histogram edges (strictly increasing); the outer bins are open-ended."""
    include_special_tokens: bool = False
    """Also count tokenizer-added special tokens (BOS/EOS). Padding never counts."""
    # --- how to run --------------------------------------------------------------------------
    backend: str = "hf"
    """Inference backend: 'hf' (transformers, any device) or 'vllm' (throughput)."""
    dtype: str = "auto"
    """Model dtype: auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16 or float16."""
    device: str = "auto"
    """Torch device for the hf backend: auto (cuda if available), cpu, cuda, cuda:1, ..."""
    kernel: str = "auto"
    """Reduction kernel: auto (Triton on CUDA, torch reference elsewhere), reference or triton."""
    fused_mlp: bool = False
    """SiLU-gated MLPs (llama, mistral, qwen2, qwen3), hf backend: compute act(gate)*up and the site's statistics in one kernel pass, so the activations are read once. Same numbers; pays off on GPUs."""
    batch_tokens: int = 8192
    """Token budget per forward pass (padded tokens included)."""
    max_length: int = 512
    """Truncate sentences longer than this many tokens (the truncation is logged)."""
    shard_size: int = 128
    """Sentences per shard: the unit of scheduling, retry, resume and bootstrap."""
    workers: int = 0
    """Ray workers (one per GPU when GPUs exist). 0: run in this process without Ray."""
    threads_per_worker: int | None = None
    """CPU threads per worker (default: all cores / workers)."""
    address: str | None = None
    """Join an existing Ray cluster ('auto' or 'ray://host:port') instead of starting a local one."""
    max_retries: int = 3
    """Times a failed shard is retried before the run stops with an error naming it."""
    trust_remote_code: bool = False
    """Allow model code from the hub (off unless you ask for it)."""
    resume: bool = False
    """Continue an interrupted run in `out`, skipping committed shards."""
    overwrite: bool = False
    """Delete an existing store at `out` first."""
    vllm_tensor_parallel: int = 1
    """vLLM tensor-parallel size (the neuron axis is re-assembled in model order)."""
    vllm_gpu_memory_utilization: float = 0.5
    """Fraction of GPU memory vLLM may take."""

    def __post_init__(self) -> None:
        from langneurons.profiler.sites import check_site

        check_site(self.site)
        self.bin_edges = list(validate_edges(self.bin_edges))
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r} is not one of {BACKENDS}")
        if self.fused_mlp and self.backend != "hf":
            raise ValueError(f"fused_mlp replaces transformers MLP modules: it needs backend 'hf', not "
                             f"{self.backend!r} (vLLM runs its own fused SiLU-and-mul kernel)")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {DTYPES}")
        for name in ("batch_tokens", "max_length", "shard_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_sentences is not None and self.max_sentences < 1:
            raise ValueError(f"max_sentences must be >= 1, got {self.max_sentences}")
        if self.workers < 0 or self.max_retries < 0:
            raise ValueError(f"workers and max_retries must be >= 0, got {self.workers}, {self.max_retries}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite contradict each other: choose one")
        if self.languages is not None:
            if len(set(self.languages)) != len(self.languages):
                raise ValueError(f"languages lists a code twice: {self.languages}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> "ProfileConfig":
        """Load a YAML or JSON config file; `overrides` (e.g. from the CLI) win."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} does not exist")
        text = p.read_text(encoding="utf-8")
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"config file {p} must hold a mapping of field: value")
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"config file {p} has unknown fields {unknown}; known: {cls.field_names()}")
        data.update(overrides)
        return cls(**data)


#: Fields that do not change the numbers: a store may be resumed with different values.
RUN_ONLY_FIELDS = frozenset({
    "out", "resume", "overwrite", "workers", "threads_per_worker", "address", "max_retries",
    "kernel", "fused_mlp", "device", "backend", "vllm_gpu_memory_utilization", "vllm_tensor_parallel",
})
# batch_tokens is not among them: batch composition changes float sums in the last bits, and a
# resumed run promises totals bit-identical to an uninterrupted one. CPU thread counts can do the
# same (matmul blocking); keep --threads-per-worker when resuming on CPU.
