"""The command line: parse, call the library, print. Nothing else lives here.

    langneurons profile [--model M] [--corpus C] [--out OUT] [--config FILE] [...]
    langneurons score RESULTS [--plot] [--out DIR]
    langneurons info RESULTS [--verify]
    langneurons ablate RESULTS [--heldout CORPUS]
    langneurons steer RESULTS --source L --target T[,T2,...] [--prompts CORPUS] [--out DIR]

Exit status: 0 on success; 2 on any error (one line on stderr naming the flag, file or array and
what to do), including `info --verify` finding damage; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from langneurons.config import SPECS, ProfileConfig, expand_path
from langneurons.options import add_args, given, specs_of
from langneurons.scoring.options import AblateConfig, LapeConfig, ProfiledModel, ScoreConfig
from langneurons.steering.options import SteerConfig
from langneurons.store.lock import lock_file_unlisted


def add_profile_args(p: argparse.ArgumentParser) -> None:
    """One flag per config field, from the sections' type hints and field declarations."""
    p.add_argument("--config", help="YAML or JSON file of profile fields (flag names, e.g. threshold: 0.5); "
                                    "flags given here override it")
    add_args(p, SPECS.values())


def config_from_args(args: argparse.Namespace) -> ProfileConfig:
    given = {k: v for k, v in vars(args).items() if k in SPECS and v is not None}
    if args.config:
        return ProfileConfig.from_file(args.config, **given)
    return ProfileConfig.from_flags(**given)


def _path(value: str) -> str:
    """A path argument with `~` and $VARS expanded (`config.expand_path`), its error argparse's own."""
    try:
        return expand_path(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class _Parser(argparse.ArgumentParser):
    """Usage errors on one line, like every other error, with exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="langneurons", description=__doc__.split("\n\n")[0])
    ap.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("profile", help="count per-language FFN activations into a Zarr store")
    add_profile_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser("score", help="LAPE language-specific neurons per layer, tables and plots")
    s.add_argument("results", type=_path, help="results store written by `langneurons profile`")
    add_args(s, specs_of(ScoreConfig) + specs_of(LapeConfig))

    i = sub.add_parser("info", help="describe a results store")
    i.add_argument("results", type=_path)
    i.add_argument("--verify", action="store_true",
                   help="read every chunk, check the attributes' checksum and re-sum the partials against "
                        "the totals; exit status 2 on any damage")

    a = sub.add_parser("ablate", help="zero each language's neurons and measure perplexity on held-out text")
    a.add_argument("results", type=_path)
    add_args(a, specs_of(AblateConfig) + specs_of(LapeConfig) + specs_of(ProfiledModel))

    t = sub.add_parser("steer", help="generate with a language's neurons deactivated and another's activated; "
                                     "judge the output language against a baseline and a random-neuron control")
    t.add_argument("results", type=_path)
    add_args(t, specs_of(SteerConfig) + specs_of(LapeConfig) + specs_of(ProfiledModel))

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
    except (ValueError, FileNotFoundError, RuntimeError, OSError, KeyError, ImportError) as e:
        if args.verbose:
            raise
        text = " ".join(str(e).split()) or type(e).__name__  # one line, whatever the message holds
        print(f"langneurons {args.command}: error: {text}", file=sys.stderr)
        return 2


def cmd_profile(args) -> int:
    from langneurons.run import profile

    cfg = config_from_args(args)
    if args.no_progress:  # no bars at all, transformers' "Loading weights" included
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    summary = profile(cfg, progress=not args.no_progress)
    print(f"wrote {summary.out}: {summary.n_shards} shards ({summary.n_skipped} already committed), "
          f"{summary.n_tokens:,} tokens in {summary.seconds:.1f}s ({summary.tokens_per_s:,.0f} tok/s)")
    if summary.tokens is not None:  # counted before profiling: a budget, or a streamed corpus
        for lang, n in summary.tokens.items():
            print(f"  {lang}: {summary.rows[lang]:,} rows, {n:,} counted tokens")
    return 0


@lock_file_unlisted()  # a store may hold a lock: a live run's, or a stale one a killed run left
def cmd_score(args) -> int:
    from langneurons.scoring import score_report
    from langneurons.scoring.report import default_report_dir
    from langneurons.store.reader import open_results

    options = ScoreConfig(**given(args, specs_of(ScoreConfig)))
    lape = LapeConfig(**given(args, specs_of(LapeConfig)))
    ds = open_results(args.results)
    if options.out is None:
        options = dataclasses.replace(options, out=str(default_report_dir(args.results)))
    print(score_report(ds, options, lape, results_path=args.results))
    return 0


@lock_file_unlisted()
def cmd_info(args) -> int:
    import xarray as xr

    from langneurons.store import schema
    from langneurons.store.reader import ResultsError, open_results, store_attrs, verify_store

    loc, a = store_attrs(args.results)
    if a.get("schema_version") not in schema.READABLE_VERSIONS:  # newer (or unknown): not damage
        raise RuntimeError(f"{args.results}: {schema.attrs_problem(a)}")
    if args.verify:
        rep = verify_store(args.results)
        for p in rep.problems:
            print(f"  DAMAGED: {p}")
        if not rep.ok:
            raise RuntimeError(f"{args.results}: {len(rep.problems)} problem(s) found (listed above); "
                               "re-profile, or --resume to profile damaged shards again")
        print(f"{args.results}: verified ({rep.chunks_read} chunks read, state {rep.state}; totals equal "
              "the sum of the committed partials kept)" if rep.state == "complete" else
              f"{args.results}: verified ({rep.chunks_read} chunks read, state {rep.state})")
        return 0
    problem = edited = schema.attrs_problem(a)
    ds = xr.open_zarr(loc.zarr_url, consolidated=False)
    if a.get("complete") and not problem:
        try:  # the totals: every chunk present, checksums, counts adding up
            ds = open_results(args.results)
        except ResultsError as e:
            problem = str(e).split(": ", 1)[-1]
    status = ("DAMAGED: " + problem if problem else
              "complete (totals checked)" if a.get("complete") else "INCOMPLETE (resume with --resume)")
    print(f"{args.results}: {status}")
    for k in ("model", "architecture", "model_fingerprint", "tokenizer_fingerprint", "bos", "site", "threshold", "dtype",
              "backend",
              "corpus", "n_sentences", "rows_per_language", "tokens_per_language", "max_tokens_per_language",
              "corpus_fingerprint", "n_shards", "created", "langneurons_version"):
        print(f"  {k:20s} {a.get(k)}")
    if edited:  # attributes that fail their checksum may hold anything: print them as they are, no more
        raise RuntimeError(f"{args.results} is damaged: {edited}")
    if a.get("complete"):
        kept = schema.kept_partials(a)
        print(f"  {'partials_kept':20s} {a.get('partials_kept') or 'all'} ({', '.join(kept) or 'no variables'})")
    if a.get("plan"):  # schema version 7 on: how the workers ran the model
        p = a["plan"]
        print(f"  {'plan':20s} {p['backend']} on {p['device']} in {p['dtype']}, kernel {p['kernel']}"
              f"{', fused MLP' if p['fused_mlp'] else ''}{', tensor parallel ' + str(p['tensor_parallel']) if p['tensor_parallel'] > 1 else ''}"
              f"{', compiled' if p.get('compiled') else ', eager' if 'compiled' in p else ''}; "
              f"{p['n_layers']} layers x {p['d_ff']} neurons, activation {p['activation']}, max_length {p['max_length']}")
    if a.get("moe"):
        m = a["moe"]
        print(f"  {'moe':20s} {m['n_experts']} experts x {m['expert_d_ff']} neurons, top-{m['top_k']}; routing layers "
              f"{m['moe_layers']}; dense FFN counted in layers {m['dense_layers']}; router: {m['router']}")
    print(f"  {'dims':20s} " + ", ".join(f"{d}={n}" for d, n in ds.sizes.items()))
    if a.get("complete") and not problem:
        toks = dict(zip(map(str, ds["language"].values), map(int, ds["n_tokens"].values)))
        print(f"  {'n_tokens':20s} {json.dumps(toks)}")
    print("  (`langneurons info --verify` also reads every partial and re-sums them)")
    if problem:
        raise RuntimeError(f"{args.results} is damaged: {problem}")
    return 0


@lock_file_unlisted()
def cmd_ablate(args) -> int:
    from langneurons.scoring.ablation import ablate_report

    print(ablate_report(args.results, AblateConfig(**given(args, specs_of(AblateConfig))),
                        LapeConfig(**given(args, specs_of(LapeConfig))),
                        ProfiledModel(**given(args, specs_of(ProfiledModel)))))
    return 0


@lock_file_unlisted()
def cmd_steer(args) -> int:
    from langneurons.steering.steer import steer

    res = steer(args.results, SteerConfig(**given(args, specs_of(SteerConfig))),
                LapeConfig(**given(args, specs_of(LapeConfig))), ProfiledModel(**given(args, specs_of(ProfiledModel))))
    print(res.text)
    print(f"wrote {res.out}: {', '.join(p.name for p in sorted(res.out.iterdir()) if not p.name.startswith('.'))}")
    return 0


_COMMANDS = {"profile": cmd_profile, "score": cmd_score, "info": cmd_info, "ablate": cmd_ablate, "steer": cmd_steer}

if __name__ == "__main__":
    sys.exit(main())
