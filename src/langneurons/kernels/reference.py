"""The reduction spec in plain torch: every kernel must equal this (integers exactly).

One call reduces an activation block ``x[T, F]`` (one layer's FFN site for T tokens) into
per-language statistics, using ``token_lang[T]`` (the language index of each token; -1 means
"not a text token": padding, BOS/EOS, masked) and adds them to device accumulators:

    n_fired[n, l, f]     += #{t : lang(t)=n, x[t,f] finite, x[t,f] > threshold}
    act_sum[n, l, f]     += sum  x[t,f]      over finite values of language n
    act_sumsq[n, l, f]   += sum  x[t,f]^2    over finite values of language n
    act_hist[n, l, f, k] += #{t : lang(t)=n, edges[k-1] < x[t,f] <= edges[k]}  (right-closed bins)
    n_nonfinite[n, l, f] += #{t : lang(t)=n, x[t,f] is NaN or +-inf}

Values are upcast to float32 before comparing, so a bf16/fp16 activation is compared exactly as
it was stored. Sums are formed in float32 per call (at most one batch of tokens) and folded into
float64 accumulators; counts go straight into int64, so a billion-token run cannot overflow.
Nothing here synchronises with the host: masks are applied arithmetically, never by indexing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from langneurons.store.schema import NEURON_VARS
from langneurons.store.stats import Stats


@dataclass
class Accumulator:
    """Device-resident running totals for N languages, L layers, F neurons, B bins."""

    n_tokens: torch.Tensor     # [N] int64
    n_fired: torch.Tensor      # [N, L, F] int64
    act_sum: torch.Tensor      # [N, L, F] float64
    act_sumsq: torch.Tensor    # [N, L, F] float64
    act_hist: torch.Tensor     # [N, L, F, B] int64
    n_nonfinite: torch.Tensor  # [N, L, F] int64
    edges: torch.Tensor        # [B-1] float32, on the same device
    threshold: float

    @classmethod
    def zeros(cls, n_languages: int, n_layers: int, d_ff: int, edges, threshold: float,
              device: torch.device | str = "cpu") -> "Accumulator":
        dev = torch.device(device)
        nlf = (n_languages, n_layers, d_ff)
        i64 = dict(dtype=torch.int64, device=dev)
        f64 = dict(dtype=torch.float64, device=dev)
        e = torch.as_tensor(edges, dtype=torch.float32, device=dev)
        return cls(
            n_tokens=torch.zeros(n_languages, **i64),
            n_fired=torch.zeros(nlf, **i64),
            act_sum=torch.zeros(nlf, **f64),
            act_sumsq=torch.zeros(nlf, **f64),
            act_hist=torch.zeros(*nlf, e.numel() + 1, **i64),
            n_nonfinite=torch.zeros(nlf, **i64),
            edges=e,
            threshold=float(threshold),
        )

    @property
    def n_languages(self) -> int:
        return self.n_fired.shape[0]

    def zero_(self) -> None:
        for v in ("n_tokens",) + NEURON_VARS:
            getattr(self, v).zero_()

    def count_tokens(self, token_lang: torch.Tensor) -> None:
        """Add the text tokens of one forward pass to n_tokens (once per pass, not per layer)."""
        tl = token_lang.reshape(-1)
        # index_add_, not bincount: bincount sizes its output from the data (a host sync on a GPU)
        self.n_tokens.index_add_(0, tl.clamp_min(0).to(torch.int64), (tl >= 0).to(torch.int64))

    def to_stats(self, language: int = 0) -> Stats:
        """Copy one language's totals to the host (the one sync, at the end of a shard)."""
        return Stats(
            n_tokens=int(self.n_tokens[language].item()),
            # a copy even on the CPU: the next shard zeroes these accumulators in place
            **{v: getattr(self, v)[language].to("cpu", copy=True).numpy() for v in NEURON_VARS},
        )


def reduce_block(x: torch.Tensor, token_lang: torch.Tensor, n_languages: int,
                 threshold: float, edges: torch.Tensor) -> dict[str, torch.Tensor]:
    """Statistics of one block, per language: the spec.

    x: [T, F] activations (any float dtype, any strides). token_lang: [T] integer, -1 = skip.
    Returns n_fired/n_nonfinite/act_hist as int64, act_sum/act_sumsq as float32 partials:
    n_fired [N, F], act_sum [N, F], act_sumsq [N, F], act_hist [N, F, B], n_nonfinite [N, F].
    """
    if x.dim() != 2:
        raise ValueError(f"x must be [tokens, d_ff], got shape {tuple(x.shape)}")
    if token_lang.shape != x.shape[:1]:
        raise ValueError(f"token_lang shape {tuple(token_lang.shape)} != tokens {x.shape[0]}")
    xf = x.float()                                    # [T, F]
    n_bins = edges.numel() + 1
    if xf.device.type == "cpu" and n_languages == 1:
        fast = _one_language_all_finite(xf, token_lang, threshold, edges, n_bins)
        if fast is not None:
            return fast
    finite = torch.isfinite(xf)                       # [T, F]
    # Bin index per value: right-closed bins, so bucketize(right=False): e[k-1] < x <= e[k].
    idx = torch.bucketize(xf, edges.to(xf.device, torch.float32), right=False)  # [T, F]
    xz = torch.where(finite, xf, 0.0)                 # non-finite values contribute nothing
    fired = (xf > threshold) & finite                 # NaN > t is False; +inf is excluded too
    out = {k: [] for k in NEURON_VARS}
    col = torch.arange(x.shape[1], device=x.device) * n_bins  # [F]
    for n in range(n_languages):
        sel = (token_lang == n).unsqueeze(1)          # [T, 1]
        sel_f = sel.to(torch.float32)
        out["n_fired"].append((fired & sel).sum(0))
        out["act_sum"].append((xz * sel_f).sum(0))
        out["act_sumsq"].append((xz * xz * sel_f).sum(0))
        out["n_nonfinite"].append((~finite & sel).sum(0))
        # Send deselected and non-finite values to a trash bin past the end, then drop it.
        flat = torch.where(sel & finite, idx + col, x.shape[1] * n_bins)
        hist = torch.bincount(flat.reshape(-1), minlength=x.shape[1] * n_bins + 1)
        out["act_hist"].append(hist[:-1].view(x.shape[1], n_bins))
    return {k: torch.stack(v) for k, v in out.items()}


def _one_language_all_finite(xf, token_lang, threshold, edges, n_bins):
    """The same statistics in fewer passes, when every row is language 0 and every value is finite
    (the hooks compact rows first; non-finite activations are rare). Host branches are free on the
    CPU. A non-finite value always makes its column's sum non-finite, so checking the [F] sums
    suffices; results equal the general path bit for bit (same reductions, minus no-op masks)."""
    if not bool((token_lang == 0).all()):
        return None
    act_sum = xf.sum(0)                               # [F]
    if not bool(torch.isfinite(act_sum).all()):
        return None
    F = xf.shape[1]
    if n_bins <= 256:  # bin = #{edges < x}: a few vectorised compares beat bucketize's search 2x
        small = torch.zeros(xf.shape, dtype=torch.uint8)
        for e in edges.tolist():
            small += xf > e
        idx = small.to(torch.int32)                   # [T, F]
    else:
        idx = torch.bucketize(xf, edges.to(torch.float32), right=False, out_int32=True)
    idx += torch.arange(F, dtype=torch.int32) * n_bins
    return {
        # int32 sums of a uint8 view are ~3x faster than summing bools (exact: counts < 2^31)
        "n_fired": (xf > threshold).view(torch.uint8).sum(0, dtype=torch.int32).long().unsqueeze(0),
        "act_sum": act_sum.unsqueeze(0),
        "act_sumsq": (xf * xf).sum(0).unsqueeze(0),
        "act_hist": torch.bincount(idx.view(-1), minlength=F * n_bins).view(1, F, n_bins),
        "n_nonfinite": torch.zeros(1, F, dtype=torch.int64),
    }


def accumulate_(acc: Accumulator, layer: int, x: torch.Tensor, token_lang: torch.Tensor) -> None:
    """Add block statistics of one layer into ``acc`` (int64 counts, float64 sums)."""
    b = reduce_block(x, token_lang, acc.n_languages, acc.threshold, acc.edges)
    acc.n_fired[:, layer] += b["n_fired"]
    acc.act_sum[:, layer] += b["act_sum"].double()
    acc.act_sumsq[:, layer] += b["act_sumsq"].double()
    acc.act_hist[:, layer] += b["act_hist"]
    acc.n_nonfinite[:, layer] += b["n_nonfinite"]



def silu_mul_accumulate_(acc: Accumulator, layer: int, gate: torch.Tensor, up: torch.Tensor,
                         token_lang: torch.Tensor, site: str, act=torch.nn.functional.silu,
                         accumulate=None) -> torch.Tensor:
    """The fused gated-MLP kernel's spec: return the model's own ``act(gate) * up`` and add the
    statistics of ``site`` (``gate``: act(gate); ``down_in``: the product) to ``acc``.

    ``act`` is the model's activation module, so on any device this returns exactly what the
    unprofiled MLP computes. gate, up: [..., F]; token_lang: one entry per row of gate.
    """
    h = act(gate)
    y = h * up
    x = h if site == "gate" else y
    (accumulate or accumulate_)(acc, layer, x.reshape(-1, x.shape[-1]), token_lang)
    return y
