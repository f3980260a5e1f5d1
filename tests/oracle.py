"""The float64 numpy oracle the backends' counts are checked against (independent of every kernel)."""

from __future__ import annotations

import numpy as np

from langneurons.store.schema import NEURON_VARS


def reference_stats_numpy(acts: list[np.ndarray], threshold: float, edges) -> dict[str, np.ndarray]:
    """Slow, obviously-correct float64 statistics of one language: a test oracle.

    acts: per layer, a [T, F] array of the text tokens' activations.
    """
    e = np.asarray(edges, dtype=np.float64)
    res = {k: [] for k in NEURON_VARS}
    for a in acts:
        a = np.asarray(a, dtype=np.float64)
        fin = np.isfinite(a)
        az = np.where(fin, a, 0.0)
        res["n_fired"].append(((a > threshold) & fin).sum(0))
        res["act_sum"].append(az.sum(0))
        res["act_sumsq"].append((az * az).sum(0))
        res["n_nonfinite"].append((~fin).sum(0))
        idx = np.searchsorted(e, a, side="left")  # e[k-1] < a <= e[k]
        h = np.zeros((a.shape[1], len(e) + 1), dtype=np.int64)
        for f in range(a.shape[1]):
            h[f] = np.bincount(idx[fin[:, f], f], minlength=len(e) + 1)
        res["act_hist"].append(h)
    return {k: np.stack(v) for k, v in res.items()}
