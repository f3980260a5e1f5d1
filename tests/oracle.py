"""The float64 numpy oracle the backends' counts are checked against (independent of every kernel)."""

from __future__ import annotations

import numpy as np
import torch

from langneurons.profiler.architectures import arch_spec, module_at
from langneurons.store.schema import NEURON_VARS


def sequence_activations(path, seqs, site):
    """(counted tokens, per layer [tokens, d_ff] float64 activations of the counted tokens) of
    `seqs` = [(input_ids, counted mask)], each run alone from position 0 (no padding), recomputed
    from each MLP's input with the architecture's own formula, not through langneurons' hooks."""
    from transformers import AutoModelForCausalLM
    from transformers.activations import ACT2FN

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    spec = arch_spec(model.config.model_type)
    blocks = module_at(model, spec.layers)
    cfg = model.config.get_text_config()  # multimodal models (gemma3) keep it in text_config
    act = ACT2FN[getattr(cfg, "hidden_activation", None) or cfg.hidden_act] if spec.gated else None
    captured = {}
    handles = []
    for i, block in enumerate(blocks):
        mlp = module_at(block, spec.mlp)
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
            handles.append(module_at(mlp, spec.down).register_forward_pre_hook(pre))
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


def moe_oracle(path, seqs, site):
    """A MoE model's routing and expert activations of `seqs` = [(input_ids, counted mask)], each run
    alone (no padding) with transformers' eager experts, independent of langneurons' hooks: the
    router logits come from the model's own `output_router_logits`, the selection is recomputed
    with the architecture's documented rule, and each expert's site from its weights.

    Returns (n_routed [L, E] int64, router_prob_sum [L, E] float64,
             acts {(layer, expert): [tokens, F_e] float64 site values of the counted tokens routed to it})."""
    from transformers import AutoModelForCausalLM
    from transformers.activations import ACT2FN

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, experts_implementation="eager").eval()
    cfg = model.config
    spec = arch_spec(cfg.model_type)
    blocks = module_at(model, spec.layers)
    sparse = [i for i, b in enumerate(blocks) if hasattr(module_at(b, spec.mlp), spec.moe.router)]
    E = getattr(cfg, "num_local_experts", None) or cfg.num_experts
    k = cfg.num_experts_per_tok
    inputs = {}
    handles = [module_at(blocks[i], spec.mlp).register_forward_pre_hook(
        lambda m, args, i=i: inputs.__setitem__(i, args[0].reshape(-1, args[0].shape[-1]))) for i in sparse]
    n_routed = np.zeros((len(blocks), E), dtype=np.int64)
    prob_sum = np.zeros((len(blocks), E), dtype=np.float64)
    acts = {}
    with torch.no_grad():
        for ids, keep in seqs:
            keep = torch.tensor(keep, dtype=torch.bool)
            out = model(input_ids=torch.tensor([ids]), output_router_logits=True)
            for layer, logits in zip(sparse, out.router_logits):
                logits = logits.float()
                probs = torch.softmax(logits, dim=-1)
                # GPT-OSS picks the top-k raw logits; the others the top-k probabilities (same order)
                chosen = torch.topk(logits if cfg.model_type == "gpt_oss" else probs, k, dim=-1).indices
                prob_sum[layer] += probs[keep].double().sum(0).numpy()
                experts = module_at(blocks[layer], spec.mlp).experts
                x = inputs[layer]
                for e in range(E):
                    rows = (chosen == e).any(-1) & keep
                    n_routed[layer, e] += int(rows.sum())
                    if cfg.model_type == "gpt_oss":
                        gu = x[rows] @ experts.gate_up_proj[e] + experts.gate_up_proj_bias[e]
                        gate = gu[:, 0::2].clamp(max=cfg.swiglu_limit)
                        up = gu[:, 1::2].clamp(min=-cfg.swiglu_limit, max=cfg.swiglu_limit)
                        g = gate * torch.sigmoid(gate * cfg.swiglu_alpha)
                        a = g if site == "gate" else (up + 1) * g
                    else:
                        gate, up = (x[rows] @ experts.gate_up_proj[e].T).chunk(2, dim=-1)
                        g = ACT2FN[cfg.hidden_act](gate)
                        a = g if site == "gate" else g * up
                    acts.setdefault((layer, e), []).append(a.double().numpy())
    for h in handles:
        h.remove()
    return n_routed, prob_sum, {key: np.concatenate(v) for key, v in acts.items()}
