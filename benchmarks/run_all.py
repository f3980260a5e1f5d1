"""`make bench`: run every benchmark, then rewrite the results table in benchmarks/README.md.

Each benchmark writes its JSON under benchmarks/results/; each benchmark module renders its own section of
the table from those files (`table()`; kernel results measured earlier on a GPU included), and this
writes them between the results markers of the README. Investigations (benchmarks/investigations/)
are not run here; their sections show what they measured when they were last run.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
README = HERE / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
RUNS = [  # (script, args): together about 32 minutes on a 2-core CPU
    ("bench_overhead.py", ["--repeats", "9"]),
    ("bench_cpu_kernel.py", []),  # the CPU kernel candidates on one block
    ("bench_store.py", []),  # profiles the demo in fine shards first
    ("bench_corpus.py", []),  # streamed corpora: rows/s and memory
    ("bench_cluster.py", []),
    ("bench_kernels.py", []),  # exits 0 at once without CUDA
    ("bench_kernel_code.py", []),  # the kernels' sm_90 machine code, read without a GPU
    ("bench_backends.py", []),  # HF vs vLLM: runs with .venv-vllm's interpreter when it exists
    ("bench_peers.py", []),  # langneurons vs plain HF/vLLM and nnsight, TransformerLens (.venv-peers), ~15 min
    ("bench_steer.py", ["--backend", "hf"]),   # steering's cost over plain generation, ~3 min
    ("bench_steer.py", ["--backend", "vllm"]),  # the same in vLLM (.venv-vllm), ~3 min
]
VLLM_PY = HERE.parent / ".venv-vllm" / "bin" / "python"


#: The modules whose sections make the results table, in its order (each renders its own).
SECTIONS = ("bench_overhead", "bench_cpu_kernel", "bench_cluster", "bench_corpus", "bench_store", "bench_backends",
            "bench_peers",
            "bench_steer", "langid_compare", "bench_inside_forward", "gpu_proof", "bench_kernels", "bench_kernel_code")


def table() -> str:
    """Every benchmark's section of the results table, from the results files (`<module>.table()`)."""
    sys.path[:0] = [str(HERE), str(HERE / "investigations")]
    return "\n".join(line for name in SECTIONS for line in importlib.import_module(name).table())


def main() -> int:
    t0 = time.perf_counter()
    failed = []
    for script, args in RUNS:
        print(f"== {script} {' '.join(args)}", flush=True)
        vllm = script == "bench_backends.py" or "vllm" in args
        py = str(VLLM_PY) if vllm and VLLM_PY.exists() else sys.executable
        if subprocess.call([py, str(HERE / script), *args]) != 0:
            failed.append(script)
    text = README.read_text()
    a, b = text.index(START) + len(START), text.index(END)
    README.write_text(text[:a] + "\n" + table() + "\n" + text[b:])
    print(f"rewrote {README} in {time.perf_counter() - t0:.0f} s total")
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
