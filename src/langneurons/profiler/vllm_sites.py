"""The hook points of vLLM's own model classes on one tensor-parallel rank (the vLLM backend's
workers), from the same architecture table as the transformers hooks."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from langneurons.profiler.architectures import ArchSpec, check_site, module_at
from langneurons.profiler.sites import SiteModule, check_distinct


def vllm_sparse_blocks(model: nn.Module, spec: ArchSpec) -> list[tuple[int, nn.Module]]:
    """(layer, sparse block) of a vLLM MoE model's routing layers; [] for a dense model."""
    if spec.moe is None:
        return []
    found = [(i, getattr(b, spec.moe.vllm_block, None)) for i, b in enumerate(module_at(model, spec.layers))]
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


def vllm_site_modules(model: nn.Module, spec: ArchSpec, site: str, act: Callable) -> tuple[list[SiteModule], int]:
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
    A MoE model's layers without a dense FFN have no hook point (d_ff 0 when none has one).
    `spec`: the architecture's, as `architectures.vllm_spec` gives it."""
    check_site(site)
    dense, d_local = vllm_dense_mlps(model, spec)
    gate_up = vllm_gate_up(spec)

    def gate(out):
        y = out[0] if isinstance(out, tuple) else out          # vLLM linears return (y, bias)
        return act(y.reshape(-1, y.shape[-1])[:, :d_local])

    ops = [id(getattr(mlp, VLLM_ACT, None)) for _, mlp in dense]
    shared = len(set(ops)) < len(ops)  # one op instance for every layer (vLLM's Gemma 3): no layer inside it
    out = []
    for i, mlp in dense:
        if site == "down_in":
            out.append(SiteModule(i, module_at(mlp, spec.down), "input"))
        elif not shared and _runs_act_then_mul(mlp, spec, d_local, act):
            out.append(SiteModule(i, getattr(mlp, VLLM_ACT), "act_and_mul", act))
        else:
            out.append(SiteModule(i, module_at(mlp, gate_up), "output", gate))
    check_distinct(out, spec, site)
    return out, d_local


def vllm_dense_mlps(model: nn.Module, spec: ArchSpec) -> tuple[list[tuple[int, nn.Module]], int]:
    """(layer, dense FFN) of every layer that has one, and this rank's slice of d_ff (0: none)."""
    dense = [(i, m) for i, b in enumerate(module_at(model, spec.layers)) if (m := _vllm_dense(spec, b)) is not None]
    return dense, int(module_at(dense[0][1], spec.down).input_size_per_partition) if dense else 0


def vllm_gate_up(spec: ArchSpec) -> str:
    """The merged [gate | up] projection's name (MoE models' dense FFNs: Llama-style MLPs)."""
    return spec.vllm_gate_up or "gate_up_proj"


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


