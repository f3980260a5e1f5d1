"""The Zarr schema: the one contract shared by every stage and every user.

A results store is a Zarr v3 group laid out as::

    results.zarr/
      zarr.json                    root attributes (see ATTRS below), sealed by `checksum`
      langneurons.lock             present while a run writes the store (see store/location.py)
      language[language]           coordinate: language codes (str)
      layer[layer]                 coordinate: 0..L-1
      neuron[neuron]               coordinate: 0..F-1 (the model's own neuron order)
      bin[bin]                     coordinate: 0..B-1
      bin_lower[bin], bin_upper[bin]   histogram edges; the outer bins are open (-inf, +inf)
      n_tokens[language]                       int64   real text tokens seen
      n_fired[language, layer, neuron]         int64   tokens with activation > threshold
      act_sum[language, layer, neuron]         float64 sum of activations
      act_sumsq[language, layer, neuron]       float64 sum of squared activations
      act_hist[language, layer, neuron, bin]   int64   histogram, bin k = (bin_lower[k], bin_upper[k]]
      n_nonfinite[language, layer, neuron]     int64   NaN/inf activations (excluded from all of the above)
      (mixture-of-experts models only, see "Mixture of experts" below:)
      expert[expert], expert_neuron[expert_neuron]   coordinates: 0..E-1, 0..F_e-1
      n_routed[language, layer, expert]        int64   counted tokens whose top-k selection includes the expert
      router_prob_sum[language, layer, expert] float64 sum over counted tokens of the router's probability
      expert_n_fired[language, layer, expert, expert_neuron]   int64    the neuron statistics inside
      expert_act_sum / expert_act_sumsq[...]                   float64  each expert, over the tokens
      expert_n_nonfinite[...]                                  int64    routed to it (no histogram)
      partials/                    one entry per shard, written by whichever worker ran it
        shard_language[shard], shard_start[shard], shard_stop[shard]   the shard plan
        shard_digest[shard]        sha256 of each shard's rows as planned (`shards.rows_digest`);
                                   a commit of other rows is refused (version 5 on)
        n_tokens[shard], n_fired[shard, layer, neuron], ... (same variables, `shard` for `language`,
                                   in the narrow PARTIAL_DTYPES: int32 counts, float32 sums)
        committed[shard]           uint8: 1 once every partial chunk of that shard is written

Partials are narrow and bounded. A shard's counts are at most its token count, which the writer
keeps below 2**31 (PARTIAL_MAX_TOKENS), so int32 holds them exactly; its sums are accumulated in
float64 while the shard runs and rounded once to float32 when it is committed (relative error at
most 2**-24 of each shard's sum). Totals are summed from them in int64/float64. Once a run is
complete, the root attribute `partials_kept` says which partial variables stay for bootstrap and
audit (KEEP_PARTIALS: "all"; "counts" = n_tokens, n_fired, n_nonfinite; "none"); the others are
deleted. Until then every partial stays, so `--resume` works as always. Readers use only the
variables `partials_kept` names.

Every chunk that should exist is written, zeros included (`write_empty_chunks`): coordinates,
`committed` and the totals always, a shard's partial chunks once it is committed. A missing chunk
is therefore damage, never "zero", and readers report it naming the array and the chunk (zarr
itself would silently read the fill value). Each chunk carries a crc32c of its stored bytes.

The root attributes carry `checksum`: sha256 over every other root attribute as canonical JSON.
An attribute edited by hand (a threshold, the model, `complete`) no longer matches, and every
reader refuses the store. It detects edits and damage, not forgery. `state` is "creating" until
every array exists, "profiling" while shards are committed, then "complete" (with `complete`
true); a store still "creating" holds no results and a new run may replace it.

The totals (root arrays) are written once, when every shard is committed, as the sum of the
committed partials in shard order: totals are therefore bit-identical however the shards were
scheduled, retried or resumed. A shard's chunks are written by one writer only; its `committed`
chunk is written last, so a reader never counts half a shard.

Mixture of experts. The root attribute `moe` is null for dense models; for MoE models it records
the layout (`profiler.moe_layout.MoeLayout`): n_experts, top_k, expert_d_ff, `moe_layers` (layers that route),
`dense_layers` (layers whose FFN the neuron variables count: a dense MLP, or a shared expert that
every token passes), the router's semantics, and `expert_neurons` (whether the expert_* variables
exist: the HF backend computes them). The neuron variables (`n_fired`, ...) hold the dense FFN
only: all zeros in a layer outside `dense_layers`, and `neuron` has length 0 (d_ff = 0) when the
model has no dense FFN at all (Mixtral, OLMoE, GPT-OSS). Routing follows the model's own router:
its chosen experts are counted as it returned them (softmax before or after top-k, renormalised or
not, ties as torch.topk broke them), never recomputed. `router_prob_sum` sums softmax over all
experts of the router logits in float32 (the distribution the router's top-k is taken from;
GPT-OSS takes top-k of the raw logits and softmaxes only those: the full softmax is stored). Per
layer in `moe_layers`, n_routed sums to top_k * n_tokens and router_prob_sum to n_tokens (up to
rounding). Expert histograms are not stored: one per expert would multiply the histogram, already
the largest variable, by the number of experts (128 for Qwen3-30B-A3B: ~300 MB per shard).

The model plan. The root attribute `plan` (version 7 on; `profiler.plan.ModelPlan.record`) states
how the workers ran the model, as resolved once before the run: backend, device, dtype, kernel,
--fused-mlp, tensor-parallel size, layers, d_ff, activation, max_length and the BOS rule's source
and token id. Every worker's loaded model is compared with it before it counts.

Token and value conventions (the spec every backend and kernel follows):
- a token counts once per language it belongs to; padding never counts; special tokens added by the
  tokenizer (BOS/EOS) are excluded unless `include_special_tokens` is set; so is a BOS langneurons
  adds where the model expects one and the tokenizer leaves it out (`bos` says which was done);
- `n_fired` counts activation > threshold (strict), the LAPE convention with threshold 0;
- histogram bins are right-closed: bin k holds bin_lower[k] < x <= bin_upper[k], so
  "activation > e" for any edge e equals the sum of the bins above it (`scoring.thresholds`);
- NaN and +-inf values are counted in `n_nonfinite` and nowhere else.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass

import numpy as np

from langneurons.store.variables import VARIABLES, names, partial_dtypes, total_dtypes

SCHEMA_VERSION = 7  # 7: `plan` (the model plan the workers ran: device, kernel, max_length, ...);
#                    6: `bos` (the BOS rule applied) and `add_bos` in the identity;
#                    5: whole-file weight fingerprint, `tokenizer_fingerprint`, each shard's row digest;
#                    4: `moe` and the MoE variables; 3: narrow partials, `partials_kept`; 2: attribute
#                    checksum, `state`, every chunk written
#: Versions this langneurons reads (a version-2 store has wide partials, all of them kept; stores
#: before version 4 are dense: no `moe` attribute; before 5 no tokenizer fingerprint or row digests;
#: before 6 no `bos`: the tokenizer's output was fed as is; before 7 no `plan`).
READABLE_VERSIONS: tuple[int, ...] = (2, 3, 4, 5, 6, 7)

#: Default histogram edges (15 edges -> 16 bins, the outer two open-ended). Dense around 0 where
#: SiLU/GELU gates live, with edges at the usual post-hoc thresholds (0, 0.1, 0.25, 0.5, 1, 2).
DEFAULT_EDGES: tuple[float, ...] = (
    -4.0, -2.0, -1.0, -0.5, -0.25, -0.1, 0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0,
)

#: The variables by group, in the order they are written (declared once in `store.variables`).
NEURON_VARS: tuple[str, ...] = names("neuron")
ALL_VARS: tuple[str, ...] = names("tokens") + NEURON_VARS
#: Mixture-of-experts variables (see "Mixture of experts" above): routing, and neurons inside experts.
ROUTING_VARS: tuple[str, ...] = names("routing")
EXPERT_VARS: tuple[str, ...] = names("expert")
MOE_VARS: tuple[str, ...] = ROUTING_VARS + EXPERT_VARS
#: The variables that sum activations or probabilities (floating point); every other one counts.
SUM_VARS: tuple[str, ...] = tuple(v.name for v in VARIABLES if v.is_sum)
#: Totals: int64 counts, float64 sums.
DTYPES: dict[str, np.dtype] = total_dtypes()
#: Per-shard partials as stored: narrow, exact under PARTIAL_MAX_TOKENS (see the module docstring);
#: n_tokens stays int64.
PARTIAL_DTYPES: dict[str, np.dtype] = partial_dtypes()
#: The most counted tokens one shard may hold: every int32 partial count is at most this.
PARTIAL_MAX_TOKENS = int(np.iinfo(np.int32).max)

#: What `--keep-partials` keeps once a run is complete: the partial variables that stay (of those
#: the store has: `store_vars`).
KEEP_PARTIALS: dict[str, tuple[str, ...]] = {
    "all": ALL_VARS + MOE_VARS,
    # what bootstrap over LAPE (neurons, experts) resamples
    "counts": ("n_tokens", "n_fired", "n_nonfinite", "n_routed", "expert_n_fired", "expert_n_nonfinite"),
    "none": (),
}


def store_vars(attrs: dict) -> tuple[str, ...]:
    """The variables a store holds (totals, and partials until the run is complete)."""
    moe = attrs.get("moe")
    if not moe:
        return ALL_VARS
    return ALL_VARS + ROUTING_VARS + (EXPERT_VARS if moe.get("expert_neurons") else ())


def kept_partials(attrs: dict) -> tuple[str, ...]:
    """The partial variables a store holds: all of them until the run is complete (and in
    version-2 stores), then those its `partials_kept` names."""
    keep = KEEP_PARTIALS[attrs.get("partials_kept") or "all"]
    return tuple(v for v in store_vars(attrs) if v in keep)


#: Dimension names after the leading `language` (totals) or `shard` (partials) axis.
TRAILING_DIMS: dict[str, tuple[str, ...]] = {v.name: v.dims for v in VARIABLES}


def dim_sizes(attrs: dict) -> dict[str, int]:
    """The length of every dimension of a store, from its root attributes."""
    size = {"language": len(attrs.get("languages") or []), "layer": attrs.get("n_layers"),
            "neuron": attrs.get("d_ff"), "bin": len(attrs.get("bin_edges") or []) + 1, "shard": attrs.get("n_shards")}
    moe = attrs.get("moe")
    if moe:
        size.update(expert=moe["n_experts"], expert_neuron=moe["expert_d_ff"])
    return size


#: Coordinate arrays of both groups, when the store has that dimension (`dim_sizes`).
COORDS: tuple[str, ...] = ("layer", "neuron", "bin", "expert", "expert_neuron")
#: The shard plan and commit markers (partials/ only).
PLAN_ARRAYS: tuple[str, ...] = ("shard", "shard_language", "shard_start", "shard_stop", "committed", "shard_digest")


def store_nodes(attrs: dict) -> dict[str, tuple[str, int]]:
    """Every Zarr node a store with these root attributes holds: {path ("" = root): (node type,
    number of dimensions)}. The one list of what a langneurons store is made of: the writer
    creates exactly these, and `--overwrite` deletes nothing else (`store.location.removable`)."""
    size = dim_sizes(attrs)
    nodes: dict[str, tuple[str, int]] = {"": ("group", 0), "partials": ("group", 0)}
    for prefix in ("", "partials/"):
        for name in (*(c for c in COORDS if c in size), "bin_lower", "bin_upper"):
            nodes[prefix + name] = ("array", 1)
        for v in store_vars(attrs):
            nodes[prefix + v] = ("array", 1 + len(TRAILING_DIMS[v]))
    nodes["language"] = ("array", 1)
    plan = PLAN_ARRAYS if attrs.get("schema_version", SCHEMA_VERSION) >= 5 else PLAN_ARRAYS[:-1]
    nodes.update({f"partials/{name}": ("array", 1) for name in plan})
    return nodes


def chunk_shape(dims: tuple[str, ...], size: dict[str, int]) -> tuple:
    """A variable's chunks: one language (or shard) each; histograms and expert neurons also one
    layer each (chunks of MBs). A dimension of length 0 (a MoE model's `neuron` without a dense
    FFN) leaves the variable without any chunk."""
    c = [1] + [max(size[d], 1) for d in dims]
    if "bin" in dims or "expert_neuron" in dims:
        c[1] = 1
    return tuple(c)


#: A language code: ASCII letters, digits, '-' and '_' (`pt-BR`, `zho_Hans`), at most 64 long.
#: Codes are coordinate values and name files of exports and plots, so '/', '..', spaces and the
#: like never pass.
_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
LANGUAGE_CODE_RULE = "use ASCII letters, digits, '-' and '_' only (e.g. en, pt-BR, zho_Hans), at most 64 characters"


def language_code_ok(code: object) -> bool:
    return isinstance(code, str) and _CODE.match(code) is not None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """The model facts recorded with the results. Workers report the ones they actually loaded,
    and a worker whose facts differ from the store's is refused (`model_mismatch`)."""

    model: str              # path or hub id as given
    fingerprint: str        # every byte of config.json and the weights (profiler.checkpoint)
    tokenizer_fingerprint: str  # the tokenizer's files (profiler.checkpoint)
    bos: str                # what opens every sequence (profiler.tokens.BosRule.record)
    architecture: str       # config.model_type
    n_layers: int
    d_ff: int               # width of the neuron variables: the dense FFN (0: a MoE model without one)
    dtype: str              # torch dtype name the forward pass ran in
    moe: dict | None = None  # a MoE model's layout as recorded (moe_layout.MoeLayout.record()), else None


@dataclass(frozen=True, slots=True)
class CorpusFacts:
    """The corpus as the store records it: the rows profiled per language (all equal for aligned
    input), and, when a budget or a streamed corpus had them counted, the tokens per language."""

    source: str
    languages: tuple[str, ...]
    fingerprint: str            # covers exactly the rows profiled
    rows: dict[str, int]
    aligned: bool = True
    tokens: dict[str, int] | None = None
    max_tokens_per_language: int | None = None

    @property
    def n_sentences(self) -> int:
        return max(self.rows.values())


#: What makes two runs the same store, and so what a resumed run must match exactly. Built by
#: `identity` from three sources and nothing else: the counting section of the config (every
#: field of `config.CountingConfig`, which is exactly what changes the numbers), the model the
#: workers loaded, and the corpus.
IDENTITY_COUNTING: tuple[str, ...] = ("site", "threshold", "bin_edges", "include_special_tokens", "add_bos", "max_length",
                                      "long_documents", "batch_tokens", "shard_tokens", "min_shards", "shard_size")
IDENTITY_MODEL: dict[str, str] = {"model_fingerprint": "fingerprint", "tokenizer_fingerprint": "tokenizer_fingerprint",
                                  "architecture": "architecture", "dtype": "dtype"}  # identity key -> ModelInfo field
IDENTITY_CORPUS: dict[str, str] = {"languages": "languages", "corpus_fingerprint": "fingerprint",
                                   "n_sentences": "n_sentences", "rows_per_language": "rows",
                                   "aligned": "aligned"}  # identity key -> CorpusFacts field


def identity(counting: dict, info: ModelInfo, corpus: CorpusFacts) -> dict:
    """The identity record (plain JSON) of a run: see IDENTITY_*."""
    if set(counting) != set(IDENTITY_COUNTING):
        raise ValueError(f"internal: the counting config has {sorted(counting)}, the schema expects "
                         f"{sorted(IDENTITY_COUNTING)}")
    out = {"schema_version": SCHEMA_VERSION}
    out.update({k: getattr(info, f) for k, f in IDENTITY_MODEL.items()})
    out.update({k: counting[k] for k in IDENTITY_COUNTING})
    out.update({k: getattr(corpus, f) for k, f in IDENTITY_CORPUS.items()})
    return json.loads(canonical_json(out))


def model_mismatch(expected: ModelInfo, got: ModelInfo) -> str | None:
    """How the model a worker loaded (`got`) differs from the one the store was made for, or None.
    The path may differ (another node mounts it elsewhere); the facts may not."""
    keys = ("fingerprint", "tokenizer_fingerprint", "bos", "architecture", "n_layers", "d_ff", "dtype", "moe")
    diff = [f"{k}: the store has {getattr(expected, k)!r}, the worker loaded {getattr(got, k)!r}"
            for k in keys if getattr(expected, k) != getattr(got, k)]
    return "; ".join(diff) or None


def root_attrs(ident: dict, info: ModelInfo, corpus: CorpusFacts, *, plan: dict | None = None, revision: str | None, backend: str,
               config: dict, run_only: list[str], versions: dict[str, str], version: str) -> dict:
    """The root attributes a run states before any array exists (the writer adds the layout and
    `state`). Provenance fields repeat identity values at the top level for people and xarray."""
    return {
        "langneurons_version": version,
        "model": info.model,
        "revision": revision,
        "model_fingerprint": info.fingerprint,
        "tokenizer_fingerprint": info.tokenizer_fingerprint,
        "architecture": info.architecture,
        "site": ident["site"],
        "threshold": ident["threshold"],
        "dtype": info.dtype,
        "backend": backend,
        "languages": list(corpus.languages),
        "corpus": corpus.source,
        "corpus_fingerprint": corpus.fingerprint,
        "n_sentences": corpus.n_sentences,
        "rows_per_language": dict(corpus.rows),
        "aligned": corpus.aligned,
        "tokens_per_language": None if corpus.tokens is None else dict(corpus.tokens),
        "max_tokens_per_language": corpus.max_tokens_per_language,
        "include_special_tokens": ident["include_special_tokens"],
        "bos": info.bos,
        "moe": info.moe,
        "plan": plan,
        "config": config,
        "run_only_config_fields": sorted(run_only),
        "versions": versions,
    }


#: Root attributes of a complete store: `root_attrs`, then what the writer adds at creation and
#: at completion (`completed`).
ATTRS: tuple[str, ...] = (
    "langneurons_version", "model", "revision", "model_fingerprint", "tokenizer_fingerprint", "architecture", "site", "threshold",
    "dtype", "backend", "languages", "corpus", "corpus_fingerprint", "n_sentences", "rows_per_language",
    "aligned", "tokens_per_language", "max_tokens_per_language", "include_special_tokens", "bos", "moe",
    "plan", "config", "run_only_config_fields", "versions",
    "langneurons_store", "identity", "n_layers", "d_ff", "bin_edges", "n_shards", "complete", "state",
    "partials_kept", "created", "completed", "schema_version", "checksum",
)
#: Root attributes a writer may change after creation (each change re-seals the checksum).
MUTABLE_ATTRS: tuple[str, ...] = ("state", "complete", "completed", "partials_kept", "checksum")


def canonical_json(obj) -> bytes:
    """The one byte encoding of plain-JSON attributes that checksums are taken over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def attrs_checksum(attrs: dict) -> str:
    """sha256 over every root attribute except `checksum` itself."""
    body = {k: v for k, v in attrs.items() if k != "checksum"}
    return "sha256:" + hashlib.sha256(canonical_json(body)).hexdigest()


def sealed(attrs: dict) -> dict:
    """`attrs` as stored (a JSON round trip) with its checksum."""
    out = json.loads(canonical_json({k: v for k, v in attrs.items() if k != "checksum"}))
    out["checksum"] = attrs_checksum(out)
    return out


def attrs_problem(attrs: dict) -> str | None:
    """Why these root attributes cannot be trusted, or None."""
    version = attrs.get("schema_version")
    if version not in READABLE_VERSIONS:
        newer = isinstance(version, int) and version > SCHEMA_VERSION
        return (f"it was written with schema version {version!r}{' (a newer langneurons)' if newer else ''}, and "
                f"this langneurons reads versions {', '.join(map(str, READABLE_VERSIONS))}: it is not damaged; open "
                "it with the langneurons that wrote it" + (" (pip install -U langneurons)" if newer else "")
                + ", or re-profile with this one")
    if "checksum" not in attrs:
        return "the root attributes have no checksum: they were edited, or this is not a complete write"
    try:
        ok = attrs_checksum(attrs) == attrs["checksum"]
    except ValueError:  # NaN/inf: not plain JSON
        ok = False
    if not ok:
        return ("the root attributes (zarr.json) were edited after the run: their checksum does not "
                "match, so the threshold, model or corpus they state may not be what was profiled. "
                "Restore the original zarr.json or re-profile")
    return None


def validate_edges(edges) -> tuple[float, ...]:
    """Return edges as a tuple of floats, or raise ValueError saying what is wrong."""
    out = tuple(float(e) for e in edges)
    if not out:
        raise ValueError("bin_edges is empty: give at least one edge, e.g. --bin-edges 0")
    if any(not math.isfinite(e) for e in out):
        raise ValueError(f"bin_edges {out} contain a non-finite value; the outer bins are already open-ended")
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"bin_edges {out} must be strictly increasing")
    return out


def bin_bounds(edges: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bound of each of the len(edges)+1 bins (outer bins open: -inf / +inf)."""
    e = np.asarray(edges, dtype=np.float64)
    lower = np.concatenate([[-np.inf], e])
    upper = np.concatenate([e, [np.inf]])
    return lower, upper
