"""The command line: parse, call the library, print. Nothing else lives here.

    langneurons profile [--model M] [--corpus C] [--out OUT] [--config FILE] [...]
    langneurons score RESULTS [--plot] [--out DIR]
    langneurons info RESULTS
    langneurons ablate RESULTS [--heldout CORPUS]
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import logging
import sys
import types
import typing
from functools import lru_cache

from langneurons.config import ProfileConfig


@lru_cache(maxsize=1)
def _field_help() -> dict[str, str]:
    """The docstring under each ProfileConfig field, read from the source: one text for code and CLI."""
    tree = ast.parse(inspect.getsource(ProfileConfig))
    body = tree.body[0].body
    out = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            out[node.target.id] = " ".join(str(nxt.value.value).split())
    return out


def _base_type(tp):
    """(python type, is_list) for annotations like `int | None` or `list[float] | None`."""
    if isinstance(tp, str):
        tp = eval(tp, vars(typing), {})  # annotations are strings under `from __future__ import annotations`
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return _base_type(args[0])
    if typing.get_origin(tp) is list:
        return typing.get_args(tp)[0], True
    return tp, False


def add_profile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML or JSON file of ProfileConfig fields; flags given here override it")
    helps = _field_help()
    for f in dataclasses.fields(ProfileConfig):
        flag = "--" + f.name.replace("_", "-")
        tp, is_list = _base_type(f.type)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        h = f"{helps.get(f.name, '')} (default: {default})"
        if tp is bool:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=h)
        elif is_list:
            p.add_argument(flag, dest=f.name, default=None, metavar="A,B,...",
                           type=lambda s, t=tp: [t(x) for x in s.split(",") if x.strip()], help=h)
        else:
            p.add_argument(flag, dest=f.name, type=tp, default=None, help=h)


def config_from_args(args: argparse.Namespace) -> ProfileConfig:
    given = {k: v for k, v in vars(args).items() if k in ProfileConfig.field_names() and v is not None}
    if args.config:
        return ProfileConfig.from_file(args.config, **given)
    return ProfileConfig(**given)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="langneurons", description=__doc__.split("\n\n")[0])
    ap.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("profile", help="count per-language FFN activations into a Zarr store")
    add_profile_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser("score", help="LAPE language-specific neurons per layer, tables and plots")
    s.add_argument("results", help="results store written by `langneurons profile`")
    s.add_argument("--plot", action="store_true", help="write PNG/SVG plots into --out")
    s.add_argument("--out", default=None, help="directory for plots and exports (default: <results>.report)")
    s.add_argument("--top-rate", type=float, default=None, help="LAPE top_rate (default 0.01)")
    s.add_argument("--filter-rate", type=float, default=None, help="LAPE filter percentile (default 0.95)")
    s.add_argument("--activation-bar-ratio", type=float, default=None,
                   help="LAPE activation-bar percentile (default 0.95)")
    s.add_argument("--threshold", type=float, default=None,
                   help="read firing probabilities at this histogram edge instead of the profiled threshold")
    s.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamples over shards for CIs (0: off)")
    s.add_argument("--export", action="store_true", help="write neuron tables (CSV/parquet) and masks into --out")

    i = sub.add_parser("info", help="describe a results store")
    i.add_argument("results")

    a = sub.add_parser("ablate", help="zero each language's neurons and measure perplexity on held-out text")
    a.add_argument("results")
    a.add_argument("--heldout", default=None,
                   help="corpus of held-out sentences (default: rows 500-599 of the bundled demo corpus)")
    a.add_argument("--max-sentences", type=int, default=100)
    a.add_argument("--device", default="auto")
    a.add_argument("--top-rate", type=float, default=0.01, help="LAPE top_rate for the masks")
    a.add_argument("--out", default=None, help="write the perplexity-ratio matrix as CSV here")

    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted: committed shards are kept; continue with --resume", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError, OSError, KeyError) as e:
        if args.verbose:
            raise
        print(f"langneurons {args.command}: error: {e}", file=sys.stderr)
        return 2


def cmd_profile(args) -> int:
    from langneurons.run import profile

    cfg = config_from_args(args)
    summary = profile(cfg, progress=not args.no_progress)
    print(f"wrote {summary.out}: {summary.n_shards} shards ({summary.n_skipped} already committed), "
          f"{summary.n_tokens:,} tokens in {summary.seconds:.1f}s ({summary.tokens_per_s:,.0f} tok/s)")
    return 0


def cmd_score(args) -> int:
    from langneurons.scoring import score_report
    from langneurons.store.reader import open_results

    ds = open_results(args.results)
    out_dir = args.out or (args.results.rstrip("/") + ".report")
    lape = {k: v for k, v in (("top_rate", args.top_rate), ("filter_rate", args.filter_rate),
                               ("activation_bar_ratio", args.activation_bar_ratio)) if v is not None}
    print(score_report(ds, out_dir=out_dir, plot=args.plot, export=args.export, threshold=args.threshold,
                       bootstrap=args.bootstrap, results_path=args.results, **lape))
    return 0


def cmd_info(args) -> int:
    from langneurons.store.reader import open_results

    ds = open_results(args.results, allow_incomplete=True, check=False)
    a = ds.attrs
    print(f"{args.results}: {'complete' if a.get('complete') else 'INCOMPLETE (resume with --resume)'}")
    for k in ("model", "architecture", "model_fingerprint", "site", "threshold", "dtype", "backend",
              "corpus", "n_sentences", "corpus_fingerprint", "created", "langneurons_version"):
        print(f"  {k:20s} {a.get(k)}")
    print(f"  {'dims':20s} " + ", ".join(f"{d}={n}" for d, n in ds.sizes.items()))
    if a.get("complete"):
        toks = dict(zip(map(str, ds["language"].values), map(int, ds["n_tokens"].values)))
        print(f"  {'n_tokens':20s} {json.dumps(toks)}")
    return 0


def cmd_ablate(args) -> int:
    from langneurons.scoring.ablation import ablate_report

    print(ablate_report(args.results, heldout=args.heldout, max_sentences=args.max_sentences,
                        device=args.device, out=args.out, top_rate=args.top_rate))
    return 0


_COMMANDS = {"profile": cmd_profile, "score": cmd_score, "info": cmd_info, "ablate": cmd_ablate}

if __name__ == "__main__":
    sys.exit(main())
