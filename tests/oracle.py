"""The float64 numpy oracle the backends' counts are checked against (independent of every kernel)."""

from __future__ import annotations

import numpy as np
import torch

from langneurons.profiler import sites
from langneurons.store.schema import NEURON_VARS


def sequence_activations(path, seqs, site):
    """(counted tokens, per layer [tokens, d_ff] float64 activations of the counted tokens) of
    `seqs` = [(input_ids, counted mask)], each run alone from position 0 (no padding), recomputed
    from each MLP's input with the architecture's own formula, not through langneurons' hooks."""
    from transformers import AutoModelForCausalLM
    from transformers.activations import ACT2FN

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    spec = sites.arch_spec(model.config.model_type)
    blocks = sites._get(model, spec.layers)
    cfg = model.config.get_text_config()  # multimodal models (gemma3) keep it in text_config
    act = ACT2FN[getattr(cfg, "hidden_activation", None) or cfg.hidden_act] if spec.gated else None
    captured = {}
    handles = []
    for i, block in enumerate(blocks):
        mlp = sites._get(block, spec.mlp)
        if spec.gated:
            def pre(m, args, i=i):
                h = args[0]
                if hasattr(m, "gate_up_proj"):  # Phi-3: one merged projection, [gate | up]
                    gate, up = m.gate_up_proj(h).chunk(2, dim=-1)
                else:
                    gate, up = m.gate_proj(h), m.up_proj(h)
                g = act(gate)
                captured[i] = g if site == "gate" else g * up
            handles.append(mlp.register_forward_pre_hook(pre))
        else:  # plain MLP: the input of the down projection
            def pre(m, args, i=i):
                captured[i] = args[0]
            handles.append(sites._get(mlp, spec.down).register_forward_pre_hook(pre))
    per_layer = [[] for _ in blocks]
    n_tokens = 0
    with torch.no_grad():
        for ids, keep in seqs:
            keep = torch.tensor(keep, dtype=torch.bool)
            model(input_ids=torch.tensor([ids]))
            n_tokens += int(keep.sum())
            for i in range(len(blocks)):
                a = captured[i].reshape(-1, captured[i].shape[-1])  # OPT flattens [B, S] itself
                per_layer[i].append(a[keep].double().numpy())
    for h in handles:
        h.remove()
    return n_tokens, [np.concatenate(a) for a in per_layer]


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
