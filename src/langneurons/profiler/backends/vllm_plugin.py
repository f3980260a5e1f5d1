"""How langneurons' hooks get into vLLM's compiled model: a model loader that installs them right
after the weights load, before vLLM first runs (and so compiles) the model.

vLLM compiles its model at the first forward pass, inside the engine's constructor; hooks added
afterwards (`LLM.apply_model`) are never seen by the compiled graph, nor by captured CUDA graphs.
Hooks present while torch.compile traces are traced with the model, and reduce through the custom
op of `profiler/ops.py`, which the graph keeps.

The loader is registered in every vLLM process by the `vllm.general_plugins` entry point
(pyproject.toml), which vLLM loads in the engine and worker processes it starts. Registering it
changes nothing: only an engine started with `load_format="langneurons"` uses it
(`backends/vllm.start_engine` does, for a compiled profiling or steering engine), and its
`model_loader_extra_config["langneurons"]` names the stage whose hooks to install (`INSTALLERS`)
and that stage's `install` arguments. Everything else is vLLM's own default loader, which it wraps.
"""

from __future__ import annotations

import copy
import importlib

LOAD_FORMAT = "langneurons"
PLUGIN = "langneurons"  # the entry point's name, for VLLM_PLUGINS
# stage -> the module whose `install(model, compiled=True, **arguments)` puts its hooks in a rank
INSTALLERS = {"profile": "langneurons.profiler.backends.vllm_worker",
              "steer": "langneurons.steering.vllm_worker"}


def hooks_missing(what: str) -> RuntimeError:
    """The error of a rank asked for hooks its engine was not started with."""
    return RuntimeError(f"langneurons' {what} are not installed in this vLLM engine: it was not started with "
                        f"load_format {LOAD_FORMAT!r} (is the vllm.general_plugins entry point installed? "
                        "pip install -e . again)")


def extra_config(stage: str, arguments: dict) -> dict:
    """The engine's `model_loader_extra_config` for `stage`'s hooks."""
    if stage not in INSTALLERS:
        raise ValueError(f"internal: no vLLM hooks for stage {stage!r} ({', '.join(INSTALLERS)})")
    return {LOAD_FORMAT: {"stage": stage, "arguments": arguments}}


def register() -> None:
    """The plugin entry point. vLLM may call it more than once per process."""
    from vllm.model_executor import model_loader

    # the registry is looked at only to stay quiet: registering again would log a warning each time
    if LOAD_FORMAT not in getattr(model_loader, "_LOAD_FORMAT_TO_MODEL_LOADER", {}):
        model_loader.register_model_loader(LOAD_FORMAT)(_loader_class())


def _loader_class():
    from vllm.model_executor.model_loader import get_model_loader
    from vllm.model_executor.model_loader.base_loader import BaseModelLoader

    class HookedLoader(BaseModelLoader):
        """vLLM's default loader, then the stage's `install(model, compiled=True, **arguments)`."""

        def __init__(self, load_config):
            super().__init__(load_config)
            extra = dict(load_config.model_loader_extra_config or {})
            if LOAD_FORMAT not in extra:
                raise ValueError(f"load format {LOAD_FORMAT!r} is langneurons' own: it needs "
                                 f"model_loader_extra_config[{LOAD_FORMAT!r}] (langneurons sets it)")
            hooks = extra.pop(LOAD_FORMAT)
            self.installer, self.arguments = INSTALLERS[hooks["stage"]], hooks["arguments"]
            inner = copy.copy(load_config)
            inner.load_format = "auto"
            inner.model_loader_extra_config = extra
            self.inner = get_model_loader(inner)

        def download_model(self, model_config) -> None:
            self.inner.download_model(model_config)

        def load_weights(self, model, model_config) -> None:
            self.inner.load_weights(model, model_config)

        def load_model(self, vllm_config, model_config, prefix: str = ""):
            model = self.inner.load_model(vllm_config=vllm_config, model_config=model_config, prefix=prefix)
            importlib.import_module(self.installer).install(model, compiled=True, **self.arguments)
            return model

    return HookedLoader
