"""The run configuration: one typed dataclass, filled from defaults, a config file and the CLI.

Each field's docstring-comment is its CLI help. `__post_init__` checks every field (type, range,
choice) before anything runs, and rejects a bad value with one message naming its flag.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from langneurons.corpus import FORMATS, CorpusError, check_code
from langneurons.store.schema import DEFAULT_EDGES, validate_edges

BACKENDS = ("hf", "vllm")
DTYPES = ("auto", "float32", "bfloat16", "float16")
SITES = ("gate", "down_in")
KERNELS = ("auto", "reference", "triton", "numba")
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DEFAULT_MAX_LENGTH = 512


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
    """Reduction kernel: auto (Triton on CUDA, numba on the CPU), reference (the plain-torch spec), triton or numba."""
    fused_mlp: bool = False
    """SiLU-gated MLPs (llama, mistral, qwen2, qwen3), hf backend: compute act(gate)*up and the site's statistics in one kernel pass, so the activations are read once. Same numbers; pays off on GPUs."""
    batch_tokens: int = 8192
    """Token budget per forward pass (padded tokens included)."""
    max_length: int | None = None
    """Truncate sentences longer than this many tokens (the truncation is logged). Default: 512, or the model's position limit if lower; more than the model's limit is refused."""
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
        self._check_types()
        flag = _flag
        for name in ("model", "revision", "corpus", "address"):
            v = getattr(self, name)
            if v is not None and not v.strip():
                raise ValueError(f"{flag(name)} is empty: give a value or leave the flag out")
        if not self.out.strip():
            raise ValueError("--out is empty: give a path for the results store, e.g. --out results/run.zarr")
        for name, choices in (("site", SITES), ("backend", BACKENDS), ("dtype", DTYPES), ("kernel", KERNELS),
                              ("corpus_format", FORMATS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{flag(name)} {getattr(self, name)!r} is not one of: {', '.join(choices)}")
        if not DEVICE.match(self.device):
            raise ValueError(f"--device {self.device!r} is not a torch device: use auto, cpu, cuda, cuda:N or mps")
        if not math.isfinite(self.threshold):
            raise ValueError(f"--threshold {self.threshold} is not a finite number: a neuron fires when its "
                             "activation is > threshold; give e.g. --threshold 0")
        try:
            self.bin_edges = [float(e) for e in validate_edges(self.bin_edges)]
        except ValueError as e:
            raise ValueError(f"--bin-edges: {e}") from None
        if self.fused_mlp and self.backend != "hf":
            raise ValueError(f"--fused-mlp replaces transformers MLP modules: it needs backend 'hf' (--backend hf), not "
                             f"{self.backend!r} (vLLM runs its own fused SiLU-and-mul kernel)")
        for name, low in (("batch_tokens", 1), ("max_length", 1), ("shard_size", 1), ("max_sentences", 1),
                          ("threads_per_worker", 1), ("vllm_tensor_parallel", 1), ("workers", 0),
                          ("max_retries", 0)):
            v = getattr(self, name)
            if v is not None and v < low:
                raise ValueError(f"{flag(name)} must be >= {low}, got {v}")
        if not 0.0 < self.vllm_gpu_memory_utilization <= 1.0:
            raise ValueError(f"--vllm-gpu-memory-utilization must be in (0, 1], got "
                             f"{self.vllm_gpu_memory_utilization}")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite contradict each other: choose one")
        if self.languages is not None:
            if not self.languages:
                raise ValueError("--languages is empty: give codes such as en,fr (or leave it out for all)")
            try:
                for code in self.languages:
                    check_code(code, "--languages")
            except CorpusError as e:
                raise ValueError(str(e)) from None
            if len({c.casefold() for c in self.languages}) != len(self.languages):
                raise ValueError(f"--languages lists a code twice: {','.join(self.languages)}")

    def _check_types(self) -> None:
        """Every field holds its annotated type (config files can hold anything)."""
        for f in fields(self):
            v = getattr(self, f.name)
            tp, is_list, optional = field_type(f.name)
            if v is None and optional:
                continue
            if is_list:
                ok = isinstance(v, list) and all(_is(x, tp) for x in v)
                want = f"a list of {tp.__name__}"
            else:
                ok = _is(v, tp)
                want = tp.__name__
            if not ok:
                raise ValueError(f"{_flag(f.name)} must be {want}, got {v!r}")
        # ints are accepted for float fields: store them as floats
        self.threshold = float(self.threshold)
        self.vllm_gpu_memory_utilization = float(self.vllm_gpu_memory_utilization)

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


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _is(v: Any, tp: type) -> bool:
    if tp is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, tp)


@functools.lru_cache(maxsize=None)
def field_type(name: str) -> tuple[type, bool, bool]:
    """(base type, is a list, may be None) of a ProfileConfig field, from its annotation."""
    tp = typing.get_type_hints(ProfileConfig)[name]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    optional = type(None) in typing.get_args(tp)
    if optional:
        tp = args[0]
    if typing.get_origin(tp) is list:
        return typing.get_args(tp)[0], True, optional
    return tp, False, optional


#: Fields that do not change the numbers: a store may be resumed with different values.
RUN_ONLY_FIELDS = frozenset({
    "out", "resume", "overwrite", "workers", "threads_per_worker", "address", "max_retries",
    "kernel", "fused_mlp", "device", "backend", "vllm_gpu_memory_utilization", "vllm_tensor_parallel",
})
# batch_tokens is not among them: batch composition changes float sums in the last bits, and a
# resumed run promises totals bit-identical to an uninterrupted one. CPU thread counts can do the
# same (matmul blocking); keep --threads-per-worker when resuming on CPU.
