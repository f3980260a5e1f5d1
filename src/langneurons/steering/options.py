"""The options of `langneurons steer`, declared once (`options.opt`): the CLI is generated from this
section, and `steering.steer` takes it. LAPE's selection (`LapeConfig`) and the profiled model
(`ProfiledModel`) are the sections `score` and `ablate` use, so their flags and defaults are theirs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from langneurons.config import BackendName
from langneurons.options import check_section, opt

Mode = Literal["replace", "add", "multiply"]
LAYERS = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


@dataclass(frozen=True, kw_only=True, slots=True)
class SteerConfig:
    """`langneurons steer STORE`: generate with the source language's neurons deactivated and the
    target's activated, beside an unsteered baseline and a random-neuron control."""

    source: str | None = opt(None, "The prompts' language, whose neurons are deactivated (a language of the store).")
    target: list[str] | None = opt(None, "Languages to steer towards, each in its own run (languages of the store).")
    prompts: str | None = opt(None, """Corpus whose --source sentences are the prompts (default: rows 500-599 of
        the bundled demo corpus, which the demo profile leaves out).""", path="one")
    max_prompts: int = opt(100, "Prompts read from the corpus (its first rows).", min=1)
    mode: Mode = opt("add", """How the target's neurons are activated, with v = the neuron's mean activation on the
        target language in the store: replace (x := v), add (x := x + alpha*v) or multiply (x := alpha*x).""")
    alpha: list[float] = opt(doc="alpha of --mode add and multiply; several values sweep it.",
                             factory=lambda: [1.0])
    deactivate_value: float = opt(0.0, "The value the source language's neurons are set to.")
    layers: str | None = opt(None, "Steer only these layers: A-B (inclusive) or A (default: every profiled layer).")
    masks: str | None = opt(None, """Neuron sets from a file `score --export` wrote (masks.pt or masks.npz) instead
        of LAPE on the store.""", path="one")
    experts: bool = opt(False, """Mixture-of-experts stores, --backend hf: also steer routing: ban the source's
        language-specific experts (expert LAPE, as `score` selects them; router logit -inf) and favour the
        target's (router logit + --expert-bias).""")
    expert_bias: float = opt(2.0, "What --experts adds to the router logits of the target's language-specific experts.")
    max_new_tokens: int = opt(32, "Tokens generated per prompt.", min=1)
    temperature: float = opt(0.0, "Sampling temperature; 0 is greedy decoding.", min=0.0)
    seed: int = opt(0, "Seed of sampling, of the control's random neurons and of the bootstrap.", min=0)
    batch_size: int = opt(16, "Prompts generated together.", min=1)
    dtype: Literal["float32", "bfloat16", "float16"] | None = opt(None, """Model dtype (default: the dtype the
        store was profiled in).""")
    backend: BackendName = opt("hf", """Generate with transformers (hf) or vLLM (vllm: the interventions run inside
        its workers, at prefill and every decode step).""")
    tensor_parallel: int = opt(1, "vLLM tensor-parallel size: each rank steers its own slice of the neurons.",
                               flag="vllm_tensor_parallel", min=1)
    vllm_eager: bool = opt(False, """vLLM backend: run the engine eager (no torch.compile, no CUDA graphs), the
        interventions installed after it starts. Default: vLLM's own compilation, the interventions compiled into
        its graph (the same tokens). MoE models run eager either way.""")
    lid_languages: Literal["store", "all"] = opt("store", """Judge each output's language among the store's
        languages (store), or among every language the language-ID model knows (all).""")
    bootstrap: int = opt(1000, "Bootstrap resamples over prompts for the rates' 95% intervals.", min=10)
    out: str | None = opt(None, """Folder for generations.jsonl, interventions.parquet, summary.csv and steer.png
        (default: <results>.steer, beside the store).""", path="one")
    plot: bool = opt(True, "Write steer.png (needs matplotlib: pip install 'langneurons[plot]').")

    def __post_init__(self) -> None:
        check_section(self)
        if self.source is None:
            raise ValueError("--source is required: the language of the prompts, whose neurons are deactivated")
        if not self.target:
            raise ValueError("--target is required: one or more languages to steer towards (e.g. --target fr,es)")
        if len(set(self.target)) != len(self.target):
            raise ValueError(f"--target names a language twice: {','.join(self.target)}")
        if self.source in self.target:
            raise ValueError(f"--target {self.source} is the --source language: steer towards another language")
        if not self.alpha or not all(math.isfinite(a) for a in self.alpha):
            raise ValueError(f"--alpha must be finite numbers, got {self.alpha}")
        if len(set(self.alpha)) != len(self.alpha):
            raise ValueError(f"--alpha names a value twice: {self.alpha}")
        if self.mode == "replace" and self.alpha != [1.0]:
            raise ValueError("--alpha is not used by --mode replace (x := v): leave it out, or use --mode add "
                             "or multiply")
        if not math.isfinite(self.deactivate_value):
            raise ValueError(f"--deactivate-value must be finite, got {self.deactivate_value}")
        if not math.isfinite(self.temperature):
            raise ValueError(f"--temperature must be finite, got {self.temperature}")
        if self.layers is not None:
            self.layer_range()
        if not math.isfinite(self.expert_bias):
            raise ValueError(f"--expert-bias must be finite, got {self.expert_bias}")
        if self.experts and self.backend != "hf":
            raise ValueError("--experts steers routing on --backend hf only (vLLM's fused-MoE router is not hooked)")
        if self.tensor_parallel > 1 and self.backend != "vllm":
            raise ValueError("--vllm-tensor-parallel needs --backend vllm")
        if self.vllm_eager and self.backend != "vllm":
            raise ValueError("--vllm-eager needs --backend vllm (the hf backend steers eagerly)")

    def layer_range(self) -> tuple[int, int] | None:
        """--layers as (first, last), inclusive; None for every layer."""
        if self.layers is None:
            return None
        m = LAYERS.match(self.layers)
        if not m:
            raise ValueError(f"--layers {self.layers!r} is not a layer range: write A-B (e.g. 0-5) or A")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if b < a:
            raise ValueError(f"--layers {self.layers}: the range is reversed; write {b}-{a}")
        return a, b
