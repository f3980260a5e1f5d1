"""A model's files: what identifies them (every byte of the weights, the tokenizer's files) and
whether they are whole (every tensor the config asks for, readable), checked before a store is
created or replaced.

A count depends on the weights and on the tokenizer, so both are part of a run's identity: a
`--resume` after either changed, or an `ablate` with other weights, is refused. The weights are
hashed whole (sha256, the files read once in 64 MiB blocks hashed on threads): a changed byte
anywhere, an interrupted download, a file swapped for another of the same size, all change it.
Measured on a 2-core AVX-512/SHA-NI VM from the page cache: 1.5-1.8 GB/s (0.3-0.4 s for the demo's
538 MB; ~10 s for an 8B bf16 checkpoint). The checkpoint check (`check_checkpoint`) reads headers
only: 0.1 s for the demo model once transformers is imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
#: The files a transformers tokenizer is built from (whichever of them a model has).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json")
BLOCK = 64 << 20     # bytes hashed per task: a whole checkpoint file is split over the threads
HASH_THREADS = 8     # hashlib releases the GIL on large updates; reads are the other half
_CACHE: dict[tuple, str] = {}  # (path, dev, inode, size, mtime, ctime) -> digest, for this process


def _is_local(model: str) -> bool:
    return Path(model).is_dir()


def _file_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _block_digest(path: Path, offset: int, size: int) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        left = size
        while left:
            chunk = f.read(min(left, 8 << 20))
            if not chunk:
                raise OSError(f"{path} ended at byte {offset + size - left} while it was hashed "
                              "(it is being written or truncated); wait until it is complete")
            h.update(chunk)
            left -= len(chunk)
    return h.digest()


def file_digest(path: Path, pool: ThreadPoolExecutor | None = None) -> str:
    """sha256 over the sha256 of each BLOCK of `path` (blocks hashed in parallel), cached for this
    process while the file's inode, size and times stay the same."""
    key = _file_key(path)
    if key in _CACHE:
        return _CACHE[key]
    size = key[3]
    offsets = range(0, max(size, 1), BLOCK)
    own = pool is None
    pool = pool or ThreadPoolExecutor(min(HASH_THREADS, len(offsets), os.cpu_count() or 1))
    try:
        parts = list(pool.map(lambda o: _block_digest(path, o, min(BLOCK, size - o)), offsets))
    finally:
        if own:
            pool.shutdown()
    h = hashlib.sha256(f"{size}:{BLOCK}:".encode())
    for p in parts:
        h.update(p)
    _CACHE[key] = digest = h.hexdigest()
    return digest


def weights_fingerprint(model: str, revision: str | None = None) -> str:
    """sha256 over config.json and, per weight file and shard index (`*.index.json`, which maps
    tensors to files), sorted by name, its name and `file_digest`. A hub id is identified by the
    id and its pinned revision (unpinned revisions say so)."""
    p = Path(model)
    if not p.is_dir():
        return f"hub:{model}@{revision or 'unpinned'}"
    weights = [f for f in p.iterdir() if f.suffix in WEIGHT_SUFFIXES and f.is_file()]
    if not weights:
        raise FileNotFoundError(f"model directory {p} has no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    files = sorted(weights + [f for f in p.iterdir() if f.name.endswith(".index.json") and f.is_file()])
    h = hashlib.sha256()
    cfg = p / "config.json"
    if cfg.is_file():
        h.update(cfg.read_bytes())
    with ThreadPoolExecutor(min(HASH_THREADS, os.cpu_count() or 1)) as pool:
        for f in files:
            h.update(f"{f.name}:{file_digest(f, pool)}\n".encode())
    return "sha256:" + h.hexdigest()


def tokenizer_fingerprint(model: str, revision: str | None = None) -> str:
    """sha256 over the tokenizer's files in a local model folder (names and bytes, TOKENIZER_FILES
    that exist); a hub id by its id and pinned revision."""
    p = Path(model)
    if not p.is_dir():
        return f"hub:{model}@{revision or 'unpinned'}"
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        f = p / name
        if f.is_file():
            h.update(f"{name}:{f.stat().st_size}:".encode())
            h.update(f.read_bytes())
    return "sha256:" + h.hexdigest()


@contextlib.contextmanager
def _quiet_transformers():
    """No load report or progress bar from a check: its findings are raised as one error."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _listed(names, limit: int = 4) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_checkpoint(model: str, revision: str | None, trust_remote_code: bool):
    """The model on the meta device, loaded from its checkpoint by transformers' own loader (its
    key renames for fused experts included) without reading a tensor: refuses a checkpoint
    whose files are cut short, or whose tensors are missing, unexpected or of another shape than
    the config asks for, naming them. Returns the meta model (the layout the workers will load)."""
    from transformers import AutoModelForCausalLM

    where = f"--model {model}"
    try:
        with _quiet_transformers():
            m, info = AutoModelForCausalLM.from_pretrained(
                model, revision=revision, trust_remote_code=trust_remote_code, device_map="meta",
                output_loading_info=True)
    except Exception as e:  # noqa: BLE001 - any failure to read the checkpoint ends the run here
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        if "ignore_mismatched_sizes" in first:
            first = "a tensor's shape differs from what config.json asks for"
        raise ValueError(f"{where}: the weights cannot be read ({type(e).__name__}: {first}); the files are "
                         "incomplete or damaged (an interrupted download or copy?) or do not belong to this "
                         "config.json: download or save the model again") from e
    problems = []
    if info.get("missing_keys"):
        problems.append(f"missing tensors {_listed(info['missing_keys'])}")
    if info.get("unexpected_keys"):
        problems.append(f"unexpected tensors {_listed(info['unexpected_keys'])}")
    if info.get("mismatched_keys"):
        problems.append(f"tensors of another shape {_listed(k[0] if isinstance(k, tuple) else k for k in info['mismatched_keys'])}")
    if problems:
        raise ValueError(f"{where}: the weights do not match config.json ({'; '.join(problems)}); a run would "
                         "count randomly initialised or ignored weights. Fix the folder (download or save the "
                         "model again, or correct config.json)")
    return m
