"""Everything only a GPU can show, in one command.

On a bare CUDA machine whose python3 already has torch, triton and transformers (nothing else
prepared, no network), from the repository root:

    python3 benchmarks/gpu_proof.py            # about 6-9 minutes on one H100

It first makes the project importable: the source tree goes on sys.path, and the pure
dependencies such an image lacks (zarr, numcodecs, donfig, google-crc32c) are installed from the
wheel folder `.whl/` (`make gpu-wheels` fills it on a machine with network: CPython 3.12
manylinux wheels, ~10 MB) into a temporary folder. Then, each part timed, and a failing part
recorded without stopping the others:

1. the kernel tests, natively (tests/test_kernels.py, test_fused_mlp.py, test_kernels_native.py):
   on CUDA the fused kernel must equal torch's own silu(gate) * up bit for bit (`torch.equal`);
2. kernel bandwidth (`bench_kernels.measure`): the stats kernel with and without histograms and
   the fused kernel, against a device-to-device copy of the same bytes; bf16 and fp32, d_ff 11008
   and 14336, 16k and 64k tokens;
3. end to end, the HF backend on randomly initialised models of real shapes in bf16 (Llama-3-8B:
   32 layers, d_model 4096, d_ff 14336; Qwen2-7B: 28 layers, 3584, 18944): tokens/s of the same
   forward passes plain and profiled with the torch reference, the Triton kernel and --fused-mlp,
   and --compile (Triton, the hooks in the compiled graph) against the same model compiled without
   hooks, variants interleaved over rounds; the reference's, Triton's and --compile's integer counts
   must be equal. (vLLM is not in the bare image and has no wheel small enough to carry there: the
   compiled vLLM path is measured on the CPU, benchmarks/bench_peers.py.)

Writes benchmarks/results/gpu_proof.json and gpu_proof.md (`make bench` folds the Markdown into
benchmarks/README.md). `--smoke` runs the same code on the CPU (tiny shapes, the Triton
interpreter, a few kernel tests) in about a minute and writes only with --out-dir: `make test`
runs it, so this script cannot rot between GPU sessions.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WHEELS = ROOT / ".whl"
NEEDED = ("zarr", "numcodecs", "donfig", "google_crc32c")  # what the GPU image lacks (Makefile GPU_WHEELS)
TARGETS = {"stats_no_hist_vs_copy": 0.80, "stats_vs_copy": 0.65, "e2e_triton_overhead_8b": 0.02}

KERNEL_SHAPES = [(t, f) for f in (11008, 14336) for t in (16384, 65536)]
SMOKE_KERNEL_SHAPES = [(64, 96)]
#: name: (architecture, config fields); the smoke run keeps the architecture and shrinks the rest
MODELS = {
    "llama3-8b": ("llama", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                                max_position_embeddings=8192, rope_theta=500000.0)),
    "qwen2-7b": ("qwen2", dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                               num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                               max_position_embeddings=32768)),
}
SMOKE_MODEL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=512, max_position_embeddings=512)


def make_importable(wheels: Path) -> list[str]:
    """Put src/, tests/ and benchmarks/ on the path; install what the image lacks from `wheels`.
    Returns the modules that had to be installed."""
    paths = [str(ROOT / "src"), str(ROOT / "tests"), str(ROOT / "benchmarks")]
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        found = sorted(wheels.glob("*.whl"))
        if not found:
            raise SystemExit(f"gpu_proof: {', '.join(missing)} cannot be imported and {wheels} holds no wheels: "
                             "run `make gpu-wheels` on a machine with network and bring .whl/ along")
        site = tempfile.mkdtemp(prefix="langneurons-site-")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--disable-pip-version-check", "--target", site, *map(str, found)], check=True)
        paths.insert(0, site)
    sys.path[:0] = paths
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return missing


def part(name: str, results: dict, fn, *args):
    """Run one part: its result, seconds and any error go into results[name]."""
    t0 = time.perf_counter()
    try:
        results[name] = {"ok": True, **fn(*args)}
    except Exception as e:  # one part failing must not cost the others their GPU minutes
        traceback.print_exc()
        results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    results[name]["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"[gpu_proof] {name}: {'ok' if results[name]['ok'] else 'FAILED'} in {results[name]['seconds']} s",
          flush=True)


# --- 1. the kernel tests, natively -------------------------------------------------------------


def kernel_tests(smoke: bool) -> dict:
    files = ["tests/test_kernels.py", "tests/test_fused_mlp.py", "tests/test_kernels_native.py"]
    select = ["tests/test_kernels.py::test_custom_edges_and_negative_threshold",
              "tests/test_kernels.py::test_rejects_a_mismatched_accumulator"] if smoke else files
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *select], cwd=ROOT,
                       capture_output=True, text=True, timeout=420)
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    summary = lines[-1] if lines else r.stderr.strip()[-300:]
    if r.returncode != 0:
        raise RuntimeError(f"kernel tests failed: {summary}\n" + r.stdout[-3000:])
    return {"tests": select, "summary": summary}


# --- 2. kernel bandwidth -----------------------------------------------------------------------


def kernel_bandwidth(dev, smoke: bool) -> dict:
    import torch
    import bench_kernels

    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        rows += bench_kernels.measure(dev, SMOKE_KERNEL_SHAPES if smoke else KERNEL_SHAPES,
                                      repeats=1 if smoke else 20, warmup=1 if smoke else 3, dtype=dtype)
    bf16 = [r for r in rows if r["dtype"] == "bf16"]
    return {"rows": rows, "min_stats_vs_copy": min(r["stats_vs_copy"] for r in bf16),
            "min_stats_no_hist_vs_copy": min(r["stats_no_hist_vs_copy"] for r in bf16)}


# --- 3. end to end -----------------------------------------------------------------------------


def sentences(n: int, words: int, seed: int = 0) -> list[str]:
    from fixtures import TRAIN_TEXT

    vocab = " ".join(TRAIN_TEXT).split()
    rng = random.Random(seed)
    return [" ".join(rng.choice(vocab) for _ in range(rng.randint(words // 2, words))) for _ in range(n)]


def end_to_end(name: str, dev, smoke: bool) -> dict:
    import bench_overhead
    import torch
    import transformers as tf
    from fixtures import make_tokenizer

    from langneurons.config import ProfileConfig
    from langneurons.profiler.backends.hf import HFBackend
    from langneurons.profiler.plan import plan_in_memory

    arch, fields = MODELS[name]
    fields = dict(fields, **(SMOKE_MODEL if smoke else {}))
    dtype = torch.float32 if smoke else torch.bfloat16
    cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config}[arch]
    mcfg = cls(bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False, **fields)
    torch.manual_seed(0)
    with torch.device(dev):
        model = tf.AutoModelForCausalLM.from_config(mcfg, dtype=dtype).eval()
    tok = make_tokenizer()
    try:
        sents = sentences(3 if smoke else 96, 16 if smoke else 240)   # ~75k tokens on the GPU
        base = dict(model=f"random-{name}", device=str(dev), dtype="float32" if smoke else "bfloat16",
                    batch_tokens=512 if smoke else 16384, max_length=512)
        variants = {"reference": dict(kernel="reference"), "triton": dict(kernel="triton"),
                    "fused": dict(kernel="reference" if smoke else "triton", fused_mlp=True)}
        cfgs = {k: ProfileConfig.from_flags(**base, **v) for k, v in variants.items()}
        # the random model in memory, not a folder
        backends = {k: HFBackend(c, plan_in_memory(c, model, tok), model=model, tokenizer=tok) for k, c in cfgs.items()}
        # --compile keeps its hooks installed in its graph: on a copy of the weights, so they never run
        # inside the other variants; its baseline is the same model compiled without hooks
        c = ProfileConfig.from_flags(**base, kernel="reference" if smoke else "triton", compile=True)
        backends["compiled"] = HFBackend(c, plan_in_memory(c, model, tok), model=copy.deepcopy(model), tokenizer=tok)
        plain_compiled = torch.compile(model.base_model, dynamic=True)
        ref = backends["reference"]
        prepared, n = bench_overhead.batches(ref, sents)   # the same padded batches every variant runs

        def sync():
            if dev.type == "cuda":
                torch.cuda.synchronize()

        def plain():
            bench_overhead.plain(ref, prepared)

        @torch.inference_mode()
        def compiled_plain():
            for ids, attention, _ in prepared:
                plain_compiled(input_ids=ids, attention_mask=attention, use_cache=False)

        runs = {"plain": plain, "plain_compiled": compiled_plain,
                **{k: (lambda b=b: b.profile(sents)) for k, b in backends.items()}}
        stats = {k: b.profile(sents) for k, b in backends.items()}     # warm-up (compiles) and the counts
        plain()
        compiled_plain()
        seconds = {k: [] for k in runs}
        for _ in range(1 if smoke else 3):
            for k, fn in runs.items():                                 # interleaved: drift cancels
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                seconds[k].append(time.perf_counter() - t0)
        out = {"architecture": arch, "shape": {k: fields[k] for k in ("num_hidden_layers", "hidden_size",
                                                                      "intermediate_size")},
               "dtype": str(dtype).replace("torch.", ""), "counted_tokens": n,
               "tokens_per_s": {k: n / statistics.median(v) for k, v in seconds.items()},
               "overhead_vs_plain": {k: statistics.median(a / p for a, p in zip(v, seconds["plain"])) - 1
                                     for k, v in seconds.items() if k not in ("plain", "plain_compiled")},
               # --compile against the model compiled without hooks: what a user of torch.compile runs
               "compiled_overhead_vs_plain_compiled": statistics.median(
                   a / p for a, p in zip(seconds["compiled"], seconds["plain_compiled"])) - 1}

        def equal(a, b):
            return bool(a.n_tokens == b.n_tokens and all((getattr(a, v) == getattr(b, v)).all()
                                                         for v in ("n_fired", "act_hist", "n_nonfinite")))

        out["triton_counts_equal_reference"] = equal(stats["reference"], stats["triton"])
        out["compiled_counts_equal_eager"] = equal(stats["compiled"], stats["triton"] if not smoke else stats["reference"])
        if not out["triton_counts_equal_reference"]:
            raise AssertionError(f"{name}: the Triton kernel's counts differ from the reference's")
        if not out["compiled_counts_equal_eager"]:
            raise AssertionError(f"{name}: --compile's counts differ from the eager backend's")
        return out
    finally:
        model = backends = None  # noqa: F841  (the weights go before the next shape is built)
        if dev.type == "cuda":
            torch.cuda.empty_cache()


# --- the report --------------------------------------------------------------------------------


def markdown(res: dict) -> str:
    env = res["environment"]
    out = [f"### GPU proof ({env['device']}; torch {env['torch']}, triton {env['triton']}, {res['date']})", ""]
    bw = res["parts"].get("kernel_bandwidth", {})
    if bw.get("ok"):
        out += ["| tokens | d_ff | dtype | copy GB/s | stats GB/s (% copy) | no hist (% copy) | fused GB/s (% copy) |",
                "|---|---|---|---|---|---|---|"]
        out += [f"| {r['tokens']} | {r['d_ff']} | {r['dtype']} | {r['copy_GBps']:.0f} | {r['stats_GBps']:.0f} "
                f"({100 * r['stats_vs_copy']:.0f}%) | {r['stats_no_hist_GBps']:.0f} ({100 * r['stats_no_hist_vs_copy']:.0f}%) | "
                f"{r['fused_GBps']:.0f} ({100 * r['fused_vs_copy']:.0f}%) |" for r in bw["rows"]]
        out.append("")
    rows = [(k, v) for k, v in res["parts"].items() if k.startswith("e2e_") and v.get("ok")]
    if rows:
        out += ["| model (random weights) | tokens | plain tok/s | reference | triton | fused | Triton counts = reference "
                "| compiled plain tok/s | --compile vs compiled plain | --compile counts = eager |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for k, v in rows:
            o = v["overhead_vs_plain"]
            c = v.get("compiled_overhead_vs_plain_compiled")
            compiled = (f"{v['tokens_per_s']['plain_compiled']:,.0f} | {100 * c:+.1f}% | {v['compiled_counts_equal_eager']}"
                        if c is not None else "not measured | | ")
            out.append(f"| {k[4:]} ({v['dtype']}) | {v['counted_tokens']:,} | {v['tokens_per_s']['plain']:,.0f} | "
                       f"{100 * o['reference']:+.1f}% | {100 * o['triton']:+.1f}% | {100 * o['fused']:+.1f}% | "
                       f"{v['triton_counts_equal_reference']} | {compiled} |")
        out.append("")
    kt = res["parts"].get("kernel_tests", {})
    out.append(f"Kernel tests run natively: {kt.get('summary', kt.get('error', 'not run'))}.")
    out += ["", "| target | measured | met |", "|---|---|---|"]
    out += [f"| {k}: {t['target']} | {t['measured']} | {t['met']} |" for k, t in res["targets"].items()]
    failed = [k for k, v in res["parts"].items() if not v.get("ok")]
    if failed:
        out += ["", "Failed parts: " + "; ".join(f"{k} ({res['parts'][k]['error'][:200]})" for k in failed)]
    return "\n".join(out) + "\n"


def targets(parts: dict) -> dict:
    bw, e2e = parts.get("kernel_bandwidth", {}), parts.get("e2e_llama3-8b", {})

    def row(target, measured, ok):
        return {"target": target, "measured": "not measured" if measured is None else round(measured, 3), "met": ok}

    s, n = bw.get("min_stats_vs_copy"), bw.get("min_stats_no_hist_vs_copy")
    o = e2e.get("overhead_vs_plain", {}).get("triton")
    return {"stats_no_hist_vs_copy": row(">= 0.80 (bf16, every shape)", n, n is not None and n >= 0.80),
            "stats_vs_copy": row(">= 0.65 (bf16, every shape)", s, s is not None and s >= 0.65),
            "e2e_triton_overhead_8b": row("<= 2% (Llama-3-8B shape)", o, o is not None and o <= 0.02)}


def table() -> list[str]:
    """This benchmark's section of the results table in benchmarks/README.md (`run_all.py`)."""
    from common import RESULTS_DIR, load

    out: list[str] = []
    gp = load("gpu_proof.json")
    if gp and not gp.get("smoke") and (RESULTS_DIR / "gpu_proof.md").is_file():
        out += [(RESULTS_DIR / "gpu_proof.md").read_text().rstrip(), ""]
    elif not gp:
        out += ["### GPU proof", "", "Not run yet: no GPU was lent to a session since `benchmarks/gpu_proof.py` "
                "was written (see above for the command).", ""]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="the same code on the CPU, tiny shapes (writes only with --out-dir)")
    ap.add_argument("--out-dir", type=Path, default=None, help="where gpu_proof.json/.md go (default: benchmarks/results)")
    ap.add_argument("--wheels", type=Path, default=WHEELS)
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: kernel_tests, kernel_bandwidth, e2e")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    installed = make_importable(args.wheels)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        if not args.smoke:
            print("gpu_proof: no CUDA device here; `--smoke` runs the same code on the CPU")
            return 2
        os.environ.setdefault("TRITON_INTERPRET", "1")   # read when triton is imported: before transformers
    import transformers
    import triton

    dev = torch.device("cuda" if cuda else "cpu")
    res = {"benchmark": "gpu_proof", "smoke": args.smoke, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "environment": {"device": torch.cuda.get_device_name(dev) if cuda else "cpu (smoke, Triton interpreter)",
                           "torch": torch.__version__, "triton": triton.__version__,
                           "transformers": transformers.__version__, "python": platform.python_version(),
                           "installed_from_wheels": installed},
           "parts": {}}
    skip = set(filter(None, args.skip.split(",")))
    if "kernel_tests" not in skip:
        part("kernel_tests", res["parts"], kernel_tests, args.smoke)
    if "kernel_bandwidth" not in skip:
        part("kernel_bandwidth", res["parts"], kernel_bandwidth, dev, args.smoke)
    if "e2e" not in skip:
        for name in MODELS:
            part(f"e2e_{name}", res["parts"], end_to_end, name, dev, args.smoke)
    res["targets"] = targets(res["parts"])
    res["seconds"] = round(time.perf_counter() - t0, 1)
    out_dir = args.out_dir or (None if args.smoke else RESULTS)
    text = markdown(res)
    print(text)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "gpu_proof.json").write_text(json.dumps(res, indent=1))
        (out_dir / "gpu_proof.md").write_text(text)
        print(f"wrote {out_dir / 'gpu_proof.json'} and gpu_proof.md in {res['seconds']} s")
    return 0 if all(p["ok"] for p in res["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
