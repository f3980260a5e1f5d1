"""The model a store was profiled with, loaded again (by `ablate` and `steer`): the store names
it, its weights and tokenizer must be the ones profiled, and it is planned and loaded as `profile`
did (`plan.model_plan`, `loader.load_model`), so sequences open with the profile's BOS rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from langneurons.profiler.plan import ModelPlan
from langneurons.scoring.options import ProfiledModel


@dataclass(frozen=True, slots=True)
class Profiled:
    plan: ModelPlan
    model: object | None   # the transformers model (eval mode, on plan.device in plan.dtype); None for vLLM,
                           # whose workers load their own weights from the plan
    tokenizer: object


def load_profiled(attrs: dict, choice: ProfiledModel, *, dtype: str = "float32", backend: str = "hf",
                  tensor_parallel: int = 1, vllm_eager: bool = False) -> Profiled:
    """The store's model (`attrs`: the store's root attributes), checked (`check_model`), planned
    in `dtype` on `choice.device` with the store's BOS setting, and loaded (HF backend)."""
    path = check_model(attrs, choice.model, allow_mismatch=choice.allow_model_mismatch)
    return load_at(path, revision=attrs.get("revision"), device=choice.device, dtype=dtype,
                   add_bos=(attrs.get("config") or {}).get("add_bos", True), trust_remote_code=choice.trust_remote_code,
                   backend=backend, tensor_parallel=tensor_parallel, vllm_eager=vllm_eager)


def load_at(path: str, *, revision: str | None = None, device: str = "auto", dtype: str = "float32",
            add_bos: bool = True, trust_remote_code: bool = False, backend: str = "hf",
            tensor_parallel: int = 1, vllm_eager: bool = False) -> Profiled:
    """The model at `path`, planned and (HF backend) loaded as `profile` would (no store check)."""
    from langneurons.config import ProfileConfig
    from langneurons.profiler import loader
    from langneurons.profiler.plan import model_plan

    plan = model_plan(ProfileConfig.from_flags(model=path, revision=revision, device=device, dtype=dtype,
                                               add_bos=add_bos, trust_remote_code=trust_remote_code, backend=backend,
                                               vllm_tensor_parallel=tensor_parallel, vllm_eager=vllm_eager))
    model = loader.load_model(plan) if backend == "hf" else None
    return Profiled(plan, model, loader.load_tokenizer(plan.model, plan.revision, plan.trust_remote_code))


def check_model(ds_attrs: dict, model: str | None, *, allow_mismatch: bool = False) -> str:
    """The model to load again: `model` or the stored path, whose weights must be the profiled ones
    (same fingerprint and revision), and its tokenizer too, unless `allow_mismatch`."""
    from langneurons.profiler.checkpoint import tokenizer_fingerprint, weights_fingerprint

    path = model or ds_attrs.get("model")
    if not path:
        raise ValueError("the results do not name their model; pass --model")
    revision = ds_attrs.get("revision")
    if str(ds_attrs.get("model_fingerprint", "")).startswith("sha256:") and not Path(path).is_dir():
        raise FileNotFoundError(f"the profiled model was the local folder {ds_attrs.get('model')}, and {path} "
                                "is no such folder; pass the model's folder with --model")
    try:
        fp = weights_fingerprint(path, revision)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}; if the model moved, pass its folder with --model") from None
    if fp != ds_attrs.get("model_fingerprint") and not allow_mismatch:
        if (ds_attrs.get("schema_version") or 0) < 5 and fp.startswith("sha256:"):
            raise ValueError(f"{ds_attrs.get('model')}: the store was written by an earlier langneurons, whose "
                             "fingerprint read only part of the weight files, so this langneurons cannot prove the "
                             "weights are the ones profiled. Re-profile, or pass --allow-model-mismatch if you "
                             "know they are")
        raise ValueError(f"the model at {path} (fingerprint {fp[:19]}..., revision {revision}) is not the one "
                         f"profiled (fingerprint {str(ds_attrs.get('model_fingerprint'))[:19]}...): its weights "
                         "changed, so the neurons would not be the ones selected. Pass the profiled model "
                         "with --model, or --allow-model-mismatch to go on anyway")
    stored_tok = ds_attrs.get("tokenizer_fingerprint")
    if stored_tok and tokenizer_fingerprint(path, revision) != stored_tok and not allow_mismatch:
        raise ValueError(f"the tokenizer at {path} is not the one profiled (its files changed): the text would be split into other tokens than the ones counted. Pass the profiled model with "
                         "--model, or --allow-model-mismatch to go on anyway")
    return path
