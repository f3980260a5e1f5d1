"""Which neurons a steering run changes, and how: the neuron sets (LAPE on the store, as `score`
selects them, or a mask file `score --export` wrote), the random-neuron control, and the table of
every operation applied.

Every operation is one affine map of a neuron's activation x at the profiled site:

    x := scale * x + shift

    deactivate (source)       scale = 0, shift = --deactivate-value
    replace    (target)       scale = 0, shift = v
    add        (target)       scale = 1, shift = alpha * v
    multiply   (target)       scale = alpha, shift = 0

where v = act_sum / n_tokens is the neuron's mean activation on the target language in the store.
A neuron assigned to both languages gets the target's operation only (deactivating it would work
against the activation). The control draws, per layer, as many neurons as the steered set holds
for each role, from the neurons no language's set holds, with the same seed every run; they get the
same arithmetic with their own v on the target language.

With --experts (mixture-of-experts stores), the routers' logits of the experts expert LAPE
(`scoring.routing`) finds specific to a language take the same map, before the router's softmax
and top-k: the source's experts are banned (scale 1, shift -inf: never chosen), the target's
favoured (scale 1, shift --expert-bias); the control bans and favours as many random experts per
layer, from those specific to no language.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

COLUMNS = ("condition", "target", "alpha", "site", "layer", "neuron", "operation", "value", "scale", "shift")
ROUTER = "router"   # the `site` of routing operations: `neuron` is then an expert, x its router logit


@dataclass(frozen=True, slots=True)
class NeuronSets:
    """Per language, its neurons as a [layer, neuron] bool mask over the steerable layers."""

    masks: xr.DataArray          # [language, layer, neuron] bool
    source: str                  # where they came from, for messages ("LAPE (top_rate 0.01, ...)", a file)

    def of(self, lang: str) -> np.ndarray:
        return self.masks.sel(language=lang).transpose("layer", "neuron").values

    def any_language(self) -> np.ndarray:
        return self.masks.any("language").transpose("layer", "neuron").values


def read_masks(path: str, languages: list[str], layers: np.ndarray, d_ff: int) -> xr.DataArray:
    """A mask file `score --export` wrote (masks.pt: {language: {layer: indices}}; masks.npz: per
    language, (layer, neuron) rows) as [language, layer, neuron] over `layers`, checked against the
    store: its languages, layers and neuron indices must be the store's."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"--masks {path} is a folder; give the masks.pt or masks.npz file in it that `score --export` wrote")
    if not p.is_file():
        raise FileNotFoundError(f"--masks {path}: no such file; give the masks.pt or masks.npz `score --export` wrote")
    rows: dict[str, np.ndarray] = {}
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                rows = {k: np.asarray(z[k], dtype=np.int64).reshape(-1, 2) for k in z.files}
        elif p.suffix == ".pt":
            import torch

            data = torch.load(p, weights_only=True)
            for lang, per_layer in data.items():
                rows[str(lang)] = np.array([(int(layer), int(n)) for layer, idx in per_layer.items()
                                            for n in np.asarray(idx).reshape(-1)], dtype=np.int64).reshape(-1, 2)
        else:
            raise ValueError(f"--masks {path}: expected masks.pt or masks.npz (from `score --export`)")
    except Exception as e:  # whatever a damaged or foreign file makes numpy or torch raise
        if str(e).startswith("--masks"):
            raise
        # (torch's own message would advise weights_only=False, which runs a file's code: not here)
        raise ValueError(f"--masks {path} cannot be read as `score --export` masks ({type(e).__name__}): it is "
                         "damaged or another kind of file; export them again with `langneurons score --export`") from None
    out = np.zeros((len(languages), len(layers), d_ff), dtype=bool)
    position = {int(layer): i for i, layer in enumerate(layers)}
    for lang, r in rows.items():
        if lang not in languages:
            continue  # another store's language: not steered here
        bad = r[(r[:, 1] < 0) | (r[:, 1] >= d_ff)]
        if bad.size:
            raise ValueError(f"--masks {path}: language {lang} names neuron {int(bad[0, 1])} of layer {int(bad[0, 0])}, "
                             f"but the store's layers have {d_ff} neurons: these masks belong to another model")
        unknown = sorted({int(x) for x in r[:, 0]} - set(position))
        if unknown:
            raise ValueError(f"--masks {path}: language {lang} has neurons in layer {unknown[0]}, which the store "
                             f"does not hold (layers {int(layers[0])}-{int(layers[-1])}): these masks belong to "
                             "another model or store")
        out[languages.index(lang), [position[int(x)] for x in r[:, 0]], r[:, 1]] = True
    return xr.DataArray(out, dims=("language", "layer", "neuron"),
                        coords={"language": languages, "layer": layers, "neuron": np.arange(d_ff)})


def target_means(ds: xr.Dataset, target: str) -> np.ndarray:
    """v = act_sum / n_tokens: each neuron's mean activation on `target`, [layer, neuron] float64."""
    n = int(ds["n_tokens"].sel(language=target))
    if n <= 0:
        raise ValueError(f"language {target} has no counted tokens in the store: profile it before steering towards it")
    return ds["act_sum"].sel(language=target).transpose("layer", "neuron").values / n


def operations(condition: str, target: str, alpha: float | None, mode: str, site: str, layers: np.ndarray,
               deactivated: np.ndarray, activated: np.ndarray, v: np.ndarray, deactivate_value: float) -> pd.DataFrame:
    """The table (COLUMNS) of one condition's neuron operations: `deactivated` and `activated` are
    disjoint [layer, neuron] masks, `v` the target's means."""
    li, ni = np.nonzero(deactivated)
    frames = [pd.DataFrame({"layer": layers[li], "neuron": ni, "operation": "deactivate",
                            "value": deactivate_value, "scale": 0.0, "shift": deactivate_value})]
    li, ni = np.nonzero(activated)
    vals = v[li, ni]
    a = 1.0 if alpha is None else alpha
    if mode == "replace":
        op = dict(operation="replace", value=vals, scale=0.0, shift=vals)
    elif mode == "add":
        op = dict(operation="add", value=a * vals, scale=1.0, shift=a * vals)
    else:
        op = dict(operation="multiply", value=a, scale=a, shift=0.0)
    frames.append(pd.DataFrame({"layer": layers[li], "neuron": ni, **op}))
    return _table(frames, condition, target, alpha, site)


def expert_operations(condition: str, target: str, alpha: float | None, layers: np.ndarray, banned: np.ndarray,
                      favoured: np.ndarray, bias: float) -> pd.DataFrame:
    """The table (COLUMNS, site ROUTER) of one condition's routing operations: `banned` and
    `favoured` are disjoint [routing layer, expert] masks."""
    li, ei = np.nonzero(banned)
    frames = [pd.DataFrame({"layer": layers[li], "neuron": ei, "operation": "ban", "value": -np.inf, "scale": 1.0,
                            "shift": -np.inf})]
    li, ei = np.nonzero(favoured)
    frames.append(pd.DataFrame({"layer": layers[li], "neuron": ei, "operation": "favour", "value": bias, "scale": 1.0,
                                "shift": bias}))
    return _table(frames, condition, target, alpha, ROUTER)


def _table(frames: list[pd.DataFrame], condition: str, target: str, alpha: float | None, site: str) -> pd.DataFrame:
    df = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else \
        pd.DataFrame(columns=["layer", "neuron", "operation", "value", "scale", "shift"])
    df.insert(0, "condition", condition)
    df.insert(1, "target", target)
    df.insert(2, "alpha", np.nan if alpha is None else float(alpha))
    df.insert(3, "site", site)
    df = df.astype({"layer": np.int64, "neuron": np.int64, "value": np.float64, "scale": np.float64,
                    "shift": np.float64})
    return df.sort_values(["layer", "neuron"], kind="stable", ignore_index=True)[list(COLUMNS)]


def empty_table() -> pd.DataFrame:
    """No operation (the baseline)."""
    return _table([], "baseline", "", None, "")


def steered_roles(sets: NeuronSets, source: str, target: str) -> tuple[np.ndarray, np.ndarray]:
    """(deactivated, activated) masks: the source's neurons, less those the target also holds; the target's."""
    act = sets.of(target)
    return sets.of(source) & ~act, act


def control_roles(sets: NeuronSets, deactivated: np.ndarray, activated: np.ndarray,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random (deactivated, activated) masks with the steered roles' per-layer counts, drawn from
    the neurons no language's set holds."""
    pool = ~sets.any_language()
    d_out, a_out = np.zeros_like(deactivated), np.zeros_like(activated)
    for i in range(pool.shape[0]):
        nd, na = int(deactivated[i].sum()), int(activated[i].sum())
        free = np.flatnonzero(pool[i])
        if nd + na > free.size:
            layer = int(sets.masks["layer"].values[i])
            raise ValueError(f"layer {layer}: the control needs {nd + na} neurons that no language's set holds, and "
                             f"only {free.size} are free; select fewer neurons (--top-rate) or restrict --layers")
        draw = rng.choice(free, size=nd + na, replace=False)
        a_out[i, draw[:na]] = True
        d_out[i, draw[na:]] = True
    return d_out, a_out
