"""Inference backends. Each loads a model once and turns sentences of one language into Stats."""

from __future__ import annotations

from typing import TYPE_CHECKING

from langneurons.config import ProfileConfig
from langneurons.profiler.backends.base import Backend, ModelInfo

if TYPE_CHECKING:
    from langneurons.profiler.plan import ModelPlan


def make_backend(cfg: ProfileConfig, plan: ModelPlan | None = None) -> Backend:
    """The backend `--backend` names, loaded (heavy imports happen only here), for `plan` (the
    driver's; made from cfg when None) and cfg's counting section."""
    if cfg.backend.name == "hf":
        from langneurons.profiler.backends.hf import HFBackend

        return HFBackend(cfg, plan)
    if cfg.backend.name == "vllm":
        from langneurons.profiler.backends.vllm import VLLMBackend

        return VLLMBackend(cfg, plan)
    raise ValueError(f"unknown backend {cfg.backend.name!r}")


__all__ = ["Backend", "ModelInfo", "make_backend"]
