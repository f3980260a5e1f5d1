"""`steer`: the Language Arithmetics experiment on a profiled store (Gurgurov et al. 2025; Tang
et al. 2024). The prompts, in the --source language, are generated three ways on the same model
and the same batches:

- baseline: no intervention;
- steered: the source's neurons deactivated, the target's activated (`neurons` has the formulas);
- control: as many random neurons per layer and role, from those no language's set holds.

Everything that can be refused is checked before the output folder is touched: the languages
(the store's, and the language-ID model's), the neuron sets, the model (the profiled weights and
tokenizer), the prompts and --out.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from langneurons.scoring.options import LapeConfig, ProfiledModel
from langneurons.steering import neurons
from langneurons.steering.generate import Decoding, HFGenerator, degenerate, encode_prompts
from langneurons.steering.langid import language_id
from langneurons.steering.options import SteerConfig

log = logging.getLogger(__name__)

MARKER = "langneurons-steer.json"
OUTPUTS = ("generations.jsonl", "interventions.parquet", "summary.csv", "steer.png")


@dataclass(frozen=True, slots=True)
class Prompts:
    rows: list[int]      # the corpus rows
    text: list[str]


@dataclass(frozen=True, slots=True)
class Run:
    """One generation pass: a condition, and for steered/control runs its target and alpha."""

    condition: str
    target: str | None
    alpha: float | None
    table: pd.DataFrame  # its operations (neurons.COLUMNS); empty for the baseline


@dataclass(frozen=True, slots=True)
class SteerResult:
    out: Path
    generations: pd.DataFrame
    interventions: pd.DataFrame
    summary: pd.DataFrame
    text: str


def default_steer_dir(results: str) -> str:
    """<store>.steer beside the store (from its absolute path, as `score`'s report folder)."""
    from langneurons.scoring.report import default_report_dir

    return default_report_dir(results).removesuffix(".report") + ".steer"


def neuron_sets(ds: xr.Dataset, cfg: SteerConfig, lape_cfg: LapeConfig) -> neurons.NeuronSets:
    """The store's language-specific neurons (LAPE as `score` selects them, or --masks), over the
    steerable layers: the dense-FFN layers, cut to --layers."""
    from langneurons.scoring.lape import firing_probability, lape

    languages = [str(x) for x in ds["language"].values]
    if ds.sizes["layer"] == 0 or ds.sizes["neuron"] == 0:  # a MoE model without dense FFNs (--experts)
        empty = xr.DataArray(np.zeros((len(languages), ds.sizes["layer"], ds.sizes["neuron"]), bool),
                             dims=("language", "layer", "neuron"), coords={"language": languages,
                             "layer": ds["layer"].values, "neuron": ds["neuron"].values})
        return neurons.NeuronSets(empty, "no dense FFN")
    if cfg.masks:
        masks = neurons.read_masks(cfg.masks, languages, ds["layer"].values, ds.sizes["neuron"])
        where = f"--masks {cfg.masks}"
    else:
        masks = lape(firing_probability(ds), lape_cfg).masks
        where = (f"LAPE (top_rate {lape_cfg.top_rate:g}, filter_rate {lape_cfg.filter_rate:g}, "
                 f"activation_bar_ratio {lape_cfg.activation_bar_ratio:g})")
    span = cfg.layer_range()
    if span is not None:
        layers = ds["layer"].values
        keep = [i for i, layer in enumerate(layers) if span[0] <= int(layer) <= span[1]]
        if not keep:
            raise ValueError(f"--layers {cfg.layers}: the store's steerable layers are {int(layers[0])}-{int(layers[-1])}")
        masks = masks.isel(layer=keep)
        where += f", layers {span[0]}-{span[1]}"
    return neurons.NeuronSets(masks, where)


def steerable(ds: xr.Dataset, results: str, experts: bool) -> xr.Dataset:
    """The store's dense-FFN layers (a mixture-of-experts store: those with a dense FFN; with
    --experts, none is needed)."""
    moe = ds.attrs.get("moe")
    if experts and not moe:
        raise ValueError(f"--experts: {results} was profiled from a dense {ds.attrs.get('architecture')} model, "
                         "which has no experts to steer; leave --experts out")
    if not moe:
        return ds
    if (not moe["dense_layers"] or ds.sizes["neuron"] == 0) and not experts:
        raise ValueError(f"{results}: this {ds.attrs.get('architecture')} model has no dense-FFN neurons (every layer "
                         "routes its tokens to experts); steer its routing with --experts")
    return ds.isel(layer=list(moe["dense_layers"]))


def expert_sets(ds: xr.Dataset, cfg: SteerConfig) -> neurons.NeuronSets:
    """Each language's specific experts by expert LAPE (as `score` selects them), [language,
    routing layer, expert] stood in for [language, layer, neuron], cut to --layers."""
    from langneurons.scoring.routing import expert_lape, routing_rate

    masks = expert_lape(routing_rate(ds)).masks.rename(expert="neuron")
    span = cfg.layer_range()
    if span is not None:
        masks = masks.isel(layer=[i for i, layer in enumerate(masks["layer"].values) if span[0] <= int(layer) <= span[1]])
    return neurons.NeuronSets(masks, "expert LAPE")


def load_prompts(cfg: SteerConfig) -> Prompts:
    from langneurons.corpus import demo_corpus_path, load_corpus

    start = 500 if cfg.prompts is None else 0  # the bundled corpus: the rows the demo profile leaves out
    corpus = load_corpus(cfg.prompts or demo_corpus_path(), languages=[cfg.source], start=start,
                         max_sentences=cfg.max_prompts)
    text = [str(s) for s in corpus.sentences[cfg.source]]
    if not text:
        raise ValueError(f"--prompts {cfg.prompts or demo_corpus_path()} has no {cfg.source} sentences to prompt with")
    return Prompts(list(range(start, start + len(text))), text)


def plan_runs(ds: xr.Dataset, sets: neurons.NeuronSets, cfg: SteerConfig, site: str,
              experts: neurons.NeuronSets | None = None, top_k: int = 0) -> list[Run]:
    """Every generation pass, baseline first; refuses a target with nothing to activate."""
    layers = sets.masks["layer"].values
    runs = [Run("baseline", None, None, neurons.empty_table())]
    languages = [str(x) for x in ds["language"].values]
    alphas: list[float | None] = [None] if cfg.mode == "replace" else list(cfg.alpha)
    for target in cfg.target:
        deact, act = neurons.steered_roles(sets, cfg.source, target)
        banned, favoured = neurons.steered_roles(experts, cfg.source, target) if experts else (None, None)
        if experts and not banned.any() and not favoured.any():
            raise ValueError(f"--experts: expert LAPE selects no expert specific to {cfg.source} or {target}"
                             f"{'' if cfg.layers is None else ' in --layers ' + cfg.layers}: there is nothing to ban or "
                             "favour; leave --experts out")
        if not act.any() and (favoured is None or not favoured.any()):
            raise ValueError(f"no neurons are selected for --target {target} by {sets.source}"
                             f"{' and no experts by expert LAPE' if experts else ''}: nothing would be activated; "
                             "select more (--top-rate), widen --layers, or choose another target")
        if not deact.any():
            log.warning("no neurons are selected for --source %s by %s", cfg.source, sets.source)
        # one draw per target (seeded by --seed and the target's place in the store), shared by every alpha
        rng = np.random.default_rng([cfg.seed, languages.index(target)])
        control = neurons.control_roles(sets, deact, act, rng)
        v = neurons.target_means(ds.sel(layer=layers), target) if len(layers) else np.zeros((0, ds.sizes["neuron"]))
        roles = {"steered": (deact, act), "control": control}
        routes = {}
        if experts:
            e_layers = experts.masks["layer"].values
            too_many = [int(e_layers[i]) for i in range(len(e_layers))
                        if banned[i].sum() > banned.shape[1] - top_k]
            if too_many:
                raise ValueError(f"--experts: layer {too_many[0]} would ban {int(banned[list(e_layers).index(too_many[0])].sum())} "
                                 f"of its {banned.shape[1]} experts, leaving fewer than its top-{top_k}; restrict --layers")
            routes = {"steered": (banned, favoured), "control": neurons.control_roles(experts, banned, favoured, rng)}
        for alpha in alphas:
            for cond, (d, a) in roles.items():
                table = neurons.operations(cond, target, alpha, cfg.mode, site, layers, d, a, v, cfg.deactivate_value)
                if experts:
                    table = pd.concat([table, neurons.expert_operations(cond, target, alpha, e_layers, *routes[cond],
                                                                        cfg.expert_bias)], ignore_index=True)
                runs.append(Run(cond, target, alpha, table))
    return runs


def steer(results: str, cfg: SteerConfig, lape_cfg: LapeConfig = LapeConfig(),
          choice: ProfiledModel = ProfiledModel()) -> SteerResult:
    """Run the experiment and write its outputs into cfg.out (see the module docstring)."""
    from langneurons import outdir
    from langneurons.scoring.profiled import load_profiled
    from langneurons.steering import report
    from langneurons.store.reader import open_results

    if cfg.out is None and "://" in results:
        raise ValueError(f"{results} is a URL: give --out, a local folder for the steering outputs")
    out = Path(cfg.out or default_steer_dir(results))
    outdir.check(out, MARKER, "steer")
    if cfg.plot:
        report.check_plotting()
    full = open_results(results)
    ds = steerable(full, results, cfg.experts)
    languages = [str(x) for x in ds["language"].values]
    for flag, codes in (("--source", [cfg.source]), ("--target", cfg.target)):
        missing = [c for c in codes if c not in languages]
        if missing:
            raise ValueError(f"{flag} {','.join(missing)}: not a language of {results} (it holds {', '.join(languages)})")
    lid = language_id()
    labels = lid.labels_for([cfg.source, *cfg.target], what="--source/--target language")
    # judged among the store's languages the model knows (one it does not know cannot be told anyway)
    among = None if cfg.lid_languages == "all" else sorted({x for c in languages if (x := lid.label_for(c))})
    site = ds.attrs.get("site", "gate")
    sets = neuron_sets(ds, cfg, lape_cfg)
    experts = expert_sets(full, cfg) if cfg.experts else None
    runs = plan_runs(ds, sets, cfg, site, experts, (full.attrs.get("moe") or {}).get("top_k", 0))
    prompts = load_prompts(cfg)
    loaded = load_profiled(ds.attrs, choice, dtype=cfg.dtype or ds.attrs.get("dtype") or "float32",
                           backend=cfg.backend, tensor_parallel=cfg.tensor_parallel, vllm_eager=cfg.vllm_eager)
    ids = encode_prompts(loaded.tokenizer, prompts.text, loaded.plan.bos.prepend)
    longest = max(map(len, ids)) + cfg.max_new_tokens
    if longest > loaded.plan.max_length:
        raise ValueError(f"the longest prompt and --max-new-tokens {cfg.max_new_tokens} make {longest} tokens, beyond "
                         f"the model's {loaded.plan.max_length}: lower --max-new-tokens or use shorter prompts")

    outdir.claim(out, MARKER, "steer", complete=False)
    for name in OUTPUTS:  # an earlier run's outputs (and an interrupted write's): never left beside this run's
        (out / name).unlink(missing_ok=True)
        report.temporary(out / name).unlink(missing_ok=True)
    decoding = Decoding(cfg.max_new_tokens, cfg.temperature, cfg.seed, cfg.batch_size)
    gen = generator(loaded, site, cfg.backend)
    try:
        outputs = {}
        for i, run in enumerate(runs):
            log.info("generating %d/%d: %s%s", i + 1, len(runs), run.condition, "" if run.target is None else
                     f" towards {run.target}" + ("" if run.alpha is None else f", alpha {run.alpha:g}"))
            outputs[i] = gen.generate(run.table, ids, decoding)
        generations = judged(runs, outputs, prompts, ids, loaded.tokenizer, gen, cfg, among)
    finally:
        gen.close()
    interventions = pd.concat([r.table for r in runs[1:]], ignore_index=True)
    summary = report.summarize(generations, cfg, labels)
    judge = f"{lid.name} among {'all its languages' if among is None else 'the store languages ' + ','.join(among)}"
    text = report.table(summary, cfg, sets.source + (", experts by expert LAPE" if experts else ""), judge,
                        loaded.plan.model)
    report.write(out, generations, interventions, summary, cfg)
    outdir.claim(out, MARKER, "steer", complete=True, results=results, model=loaded.plan.model,
                 model_fingerprint=loaded.plan.fingerprint, dtype=loaded.plan.dtype, site=site,
                 neurons=sets.source + (", experts by expert LAPE" if experts else ""),
                 language_id=judge, labels=labels, steer=dataclasses.asdict(cfg), lape=dataclasses.asdict(lape_cfg))
    return SteerResult(out, generations, interventions, summary, text)


def generator(loaded, site: str, backend: str):
    """The backend's generator: `generate(table, prompts, decoding)`, `mean_logprob`, `close`."""
    if backend == "vllm":
        from langneurons.steering.vllm import VLLMGenerator

        return VLLMGenerator(loaded, site)
    return HFGenerator(loaded, site)


def judged(runs: list[Run], outputs: dict[int, list[list[int]]], prompts: Prompts, ids: list[list[int]], tokenizer,
           gen, cfg: SteerConfig, among: list[str] | None) -> pd.DataFrame:
    """generations.jsonl's rows: each output with its language, confidence, log-probability under
    the unsteered model and whether it degenerated."""
    lid = language_id()
    rows = []
    for i, run in enumerate(runs):
        out = outputs[i]
        texts = [tokenizer.decode(g, skip_special_tokens=True) for g in out]
        found = lid.identify(texts, among)
        logp = gen.mean_logprob(ids, out)  # no interventions installed: the unsteered model
        for k, (g, t, f) in enumerate(zip(out, texts, found)):
            rows.append({"condition": run.condition, "source": cfg.source, "target": run.target, "alpha": run.alpha,
                         "prompt_row": prompts.rows[k], "prompt_language": cfg.source, "prompt": prompts.text[k],
                         "output": t, "output_ids": g, "language": f.label, "confidence": f.confidence,
                         "logprob": logp[k], "degenerate": degenerate(g)})
    return pd.DataFrame(rows)
