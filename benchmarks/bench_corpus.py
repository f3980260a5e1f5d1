"""Reading corpora at scale: rows/s and peak memory of the streamed reader, and of token counting.

For each per-language layout (text lines, JSONL, Parquet) a generated monolingual corpus of
`--rows` rows is opened (one pass: row count, fingerprint, checkpoints), then counted with the
demo model's tokenizer (SmolLM2, the pass a token budget or token-even sharding makes in the
driver), then read back shard by shard. Each measurement runs in a fresh process; its peak
resident memory (VmHWM) is reported above what its imports took.

    python benchmarks/bench_corpus.py [--rows 500000] [--out benchmarks/results/corpus.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from common import machine_info  # noqa: E402

CHILD = r"""
import json, sys, time
from pathlib import Path
hwm = lambda: next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
from langneurons.corpus import Budgeted, open_corpus
from langneurons.shards import plan_shards
from langneurons.profiler import tokens
d, mode = Path(sys.argv[1]), sys.argv[2]
count = lambda texts, wheres: [len(t) for t in texts]
if mode == "tokenizer":
    from transformers import AutoTokenizer
    from langneurons import demo
    tok = AutoTokenizer.from_pretrained(demo.demo_model_path("smollm2"))
    count = lambda texts, wheres: tokens.counted_tokens(tok, texts, include_special_tokens=False, max_length=512,
                                                        long_documents="window")
base = hwm()
t0 = time.perf_counter()
c = open_corpus(d, unaligned=True)
t1 = time.perf_counter()
b = Budgeted(c, count, None)
t2 = time.perf_counter()
shards = plan_shards(b, 128)
n = sum(len(b.rows(s.language, s.start, s.stop)) for s in shards)
t3 = time.perf_counter()
b.close()
rows = c.n_rows("en")
print(json.dumps({"rows": rows, "tokens": b.n_tokens("en"), "open_rows_per_s": rows / (t1 - t0),
                  "count_rows_per_s": rows / (t2 - t1), "read_shards_rows_per_s": n / (t3 - t2),
                  "imports_mb": base, "peak_growth_mb": hwm() - base}))
"""

WORDS = ("the quick brown fox jumps over the lazy dog while a bird sings in the old tree near the river "
         "and children play football on the green field").split()


def generate(d: Path, kind: str, rows: int) -> int:
    import random

    rng = random.Random(0)
    texts = (" ".join(rng.choices(WORDS, k=rng.randint(8, 40))) for _ in range(rows))
    d.mkdir(parents=True)
    if kind == "txt":
        with open(d / "en.txt", "w") as f:
            for t in texts:
                f.write(t + "\n")
    elif kind == "jsonl":
        with open(d / "en.jsonl", "w") as f:
            for t in texts:
                f.write(json.dumps({"text": t}) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": list(texts)}), d / "en.parquet", row_group_size=50_000)
    return sum(p.stat().st_size for p in d.iterdir())


def table() -> list[str]:
    """This benchmark's section of the results table in benchmarks/README.md (`run_all.py`)."""
    from common import load

    out: list[str] = []
    cp = load("corpus.json")
    if cp:
        out += [f"### Streamed corpora ({cp['rows']:,} rows per layout, one language; {cp['machine']['cpu']})", "",
                "| layout | count with | open rows/s | count rows/s | read by shards rows/s | peak memory growth |",
                "|---|---|---|---|---|---|"]
        for k, r in cp["results"].items():
            kind, mode = k.split("/")
            out.append(f"| {kind} | {'SmolLM2 tokenizer' if mode == 'tokenizer' else 'characters'} | "
                       f"{r['open_rows_per_s']:,.0f} | {r['count_rows_per_s']:,.0f} | "
                       f"{r['read_shards_rows_per_s']:,.0f} | {r['peak_growth_mb']:.1f} MB |")
        out.append("")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "corpus.json")
    args = ap.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("txt", "jsonl", "parquet"):
            d = Path(tmp) / kind
            size = generate(d, kind, args.rows)
            for mode in ("characters", "tokenizer"):
                t0 = time.perf_counter()
                r = subprocess.run([sys.executable, "-c", CHILD, str(d), mode], capture_output=True, text=True)
                if r.returncode != 0:
                    raise SystemExit(r.stderr[-2000:])
                res = json.loads(r.stdout.strip().splitlines()[-1])
                res.update(file_mb=size / 2**20, wall_s=time.perf_counter() - t0)
                results[f"{kind}/{mode}"] = res
                print(f"{kind:8s} {mode:10s} open {res['open_rows_per_s']:>10,.0f} rows/s  count "
                      f"{res['count_rows_per_s']:>10,.0f} rows/s  read {res['read_shards_rows_per_s']:>10,.0f} "
                      f"rows/s  peak +{res['peak_growth_mb']:.1f} MB (file {res['file_mb']:.0f} MB)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": args.rows, "results": results, "machine": machine_info()}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
