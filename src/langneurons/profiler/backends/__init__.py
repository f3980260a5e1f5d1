"""Inference backends. Each loads a model once and turns sentences of one language into Stats."""

from __future__ import annotations

from langneurons.config import ProfileConfig
from langneurons.profiler.backends.base import Backend, ModelInfo


def make_backend(cfg: ProfileConfig) -> Backend:
    """The backend `--backend` names, loaded (heavy imports happen only here)."""
    if cfg.backend.name == "hf":
        from langneurons.profiler.backends.hf import HFBackend

        return HFBackend(cfg)
    if cfg.backend.name == "vllm":
        from langneurons.profiler.backends.vllm import VLLMBackend

        return VLLMBackend(cfg)
    raise ValueError(f"unknown backend {cfg.backend.name!r}")


__all__ = ["Backend", "ModelInfo", "make_backend"]
