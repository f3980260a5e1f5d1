"""The bad-input matrix: every case exits 2 with one line that names the flag, file or array and
says what to do, prints no traceback, creates no store, and leaves every pre-existing file as it
was (the whole tree is hashed before and after each case).

The world every case runs in: a tiny model, a corpus, a "home" folder with an .ssh key, a finished
results store, a Zarr store made by someone else, and broken inputs. Cases that would destroy
data if the tool were wrong run against the real files, not against mocks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from fixtures import SENTENCES, make_tiny_model

from langneurons.cli import main

NEW = "new.zarr"  # a fresh --out in the world's root: must never exist after a refusal


@dataclass
class World:
    root: Path

    def __getattr__(self, name: str) -> str:
        return str(self.root / name.replace("__", "."))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    import zarr

    root = tmp_path_factory.mktemp("world")
    w = World(root)
    make_tiny_model("llama", root / "model")
    make_tiny_model("gpt2", root / "gpt2")
    corpus = root / "corpus"
    corpus.mkdir()
    for lang, sents in SENTENCES.items():
        (corpus / f"{lang}.txt").write_text("\n".join(sents) + "\n", encoding="utf-8")
    home = root / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY\n")
    (home / "notes.txt").write_text("my thesis notes\n")
    (root / "file.txt").write_text("a file\n")
    os.symlink(home, root / "link_to_home")
    os.symlink(root / "nowhere", root / "broken_link")
    zarr.open_group(str(root / "other.zarr"), mode="w", zarr_format=3).attrs["made_by"] = "someone else"
    # a finished langneurons store, and copies holding things langneurons did not write
    assert main(["profile", "--model", w.model, "--corpus", w.corpus, "--out", str(root / "store.zarr"),
                 "--shard-size", "2", "--batch-tokens", "64", "--no-progress"]) == 0
    shutil.copytree(root / "store.zarr", root / "store_extra.zarr")
    (root / "store_extra.zarr" / "notes.txt").write_text("mine\n")
    shutil.copytree(root / "store.zarr", root / "store_link.zarr")
    os.symlink(home, root / "store_link.zarr" / "n_fired" / "c" / "home")
    shutil.copytree(root / "store.zarr", root / "store_dir.zarr")
    (root / "store_dir.zarr" / "partials" / "my_analysis").mkdir()
    # Zarr data of the user's nested in copies of the store: --overwrite must keep every byte
    import xarray as xr

    for name in ("store_group", "store_inner", "store_emptygroup", "store_wrongkind", "store_chunklike"):
        shutil.copytree(root / "store.zarr", root / f"{name}.zarr")
    xr.Dataset({"score": ("x", [1.0, 2.0])}).to_zarr(str(root / "store_group.zarr"), group="my_analysis", mode="a")
    shutil.copytree(root / "store.zarr", root / "store_inner.zarr" / "inner.zarr")
    zarr.open_group(str(root / "store_emptygroup.zarr" / "partials" / "mine"), mode="w", zarr_format=3)
    shutil.rmtree(root / "store_wrongkind.zarr" / "partials" / "shard_stop")   # a group where the schema has an array
    zarr.open_group(str(root / "store_wrongkind.zarr" / "partials" / "shard_stop"), mode="w", zarr_format=3)
    shutil.copytree(root / "store.zarr", root / "store_edited.zarr")     # root attributes of the wrong type
    meta = json.loads((root / "store_edited.zarr" / "zarr.json").read_text())
    meta["attributes"]["moe"] = 1
    (root / "store_edited.zarr" / "zarr.json").write_text(json.dumps(meta))
    (root / "report_link").mkdir()                                          # an earlier report, and a link in it
    (root / "report_link" / "langneurons-report.json").write_text("{}\n")
    os.symlink(home / "notes.txt", root / "report_link" / "neurons.csv")
    os.symlink(home / "notes.txt", root / "link_to_notes.csv")
    (root / "store_chunklike.zarr" / "act_sum" / "c" / "7" / "0").mkdir(parents=True)  # 3 languages: c/0-2 only
    (root / "store_chunklike.zarr" / "act_sum" / "c" / "7" / "0" / "0").write_bytes(b"my bytes")
    # broken models
    shutil.copytree(root / "model", root / "no_tokenizer")
    for f in (root / "no_tokenizer").iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            f.unlink()
    (root / "no_weights").mkdir()
    shutil.copy(root / "model" / "config.json", root / "no_weights" / "config.json")
    broken_models(root)
    shutil.copytree(root / "model", root / "unsupported")
    cfg = json.loads((root / "model" / "config.json").read_text())
    cfg.update(model_type="granitemoe", architectures=["GraniteMoeForCausalLM"], num_local_experts=2)
    (root / "unsupported" / "config.json").write_text(json.dumps(cfg))
    # broken corpora
    for name, files in {
        "cr": {"en.txt": b"one\rtwo\rthree\r", "fr.txt": b"un\rdeux\rtrois\r"},
        "empty_line": {"en.txt": b"one\n\nthree\n", "fr.txt": b"un\ndeux\ntrois\n"},
        "misaligned": {"en.txt": b"one\ntwo\n", "fr.txt": b"un\n"},
        "latin1": {"en.txt": b"caf\xe9\n", "fr.txt": b"caf\xe9\n"},
    }.items():
        (root / name).mkdir()
        for f, data in files.items():
            (root / name / f).write_bytes(data)
    (root / "slash.tsv").write_text("en\t../fr\nhello\tbonjour\n", encoding="utf-8")
    (root / "pair.tsv").write_text("en\tfr\nhello\tbonjour\n", encoding="utf-8")
    (root / "mono").mkdir()
    (root / "mono" / "en.jsonl").write_text('{"text": "hello"}\n{"txt": "no text field"}\n', encoding="utf-8")
    (root / "mono" / "fr.txt").write_text("bonjour\n\n" + "le chien " * 40 + "\n", encoding="utf-8")
    (root / "ragged").mkdir()
    (root / "ragged" / "en.jsonl").write_text('{"text": "hello"}\n{"text": "dog"}\n', encoding="utf-8")
    (root / "ragged" / "fr.txt").write_text("bonjour\n", encoding="utf-8")
    (root / "slash.jsonl").write_text('{"en": "hi", "fr/x": "salut"}\n', encoding="utf-8")
    # for steer: a store holding a language the language-ID model does not know, and mask files
    (root / "klingon").mkdir()
    for lang, sents in (("en", SENTENCES["en"]), ("tlh", ["nuqneH", "Qapla' batlh", "tlhIngan maH", "jIyajbe'"])):
        (root / "klingon" / f"{lang}.txt").write_text("\n".join(sents) + "\n", encoding="utf-8")
    assert main(["profile", "--model", w.model, "--corpus", str(root / "klingon"), "--out", str(root / "store_tlh.zarr"),
                 "--batch-tokens", "64", "--no-progress"]) == 0
    import numpy as np

    np.savez(root / "masks_no_ru.npz", en=np.array([[0, 1]]), fr=np.array([[0, 2]]))
    np.savez(root / "masks_other.npz", en=np.array([[0, 1]]), ru=np.array([[1, 99]]))
    (root / "corrupt_masks.pt").write_bytes(b"not a torch file\n")
    (root / "unknown.yaml").write_text("modle: x\n")
    (root / "nan.yaml").write_text("threshold: .nan\n")
    (root / "stringint.json").write_text('{"shard_size": "5"}')
    return w


def broken_models(root: Path) -> None:
    """Copies of the world's model whose weights or tokenizer differ from what config.json and the
    store say: cut short, a layer missing or extra, a tensor of another shape, one byte changed,
    another tokenizer."""
    from safetensors.torch import load_file, save_file

    weights = root / "model" / "model.safetensors"
    for name in ("truncated", "missing_layer", "extra_layer", "other_shape", "one_byte", "other_tokenizer"):
        shutil.copytree(root / "model", root / name)
    data = weights.read_bytes()
    (root / "truncated" / "model.safetensors").write_bytes(data[: len(data) * 2 // 3])   # an interrupted download
    cfg = json.loads((root / "model" / "config.json").read_text())
    (root / "missing_layer" / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    (root / "extra_layer" / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 1}))
    tensors = load_file(weights)
    gate = "model.layers.1.mlp.gate_proj.weight"
    save_file({**tensors, gate: tensors[gate][:-1].clone()}, root / "other_shape" / "model.safetensors",
              metadata={"format": "pt"})
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01                 # the middle of the file: same size, same header
    (root / "one_byte" / "model.safetensors").write_bytes(bytes(flipped))
    tok = json.loads((root / "model" / "tokenizer.json").read_text())
    tok["post_processor"] = None                    # BOS no longer added: other counts, same weights
    (root / "other_tokenizer" / "tokenizer.json").write_text(json.dumps(tok))


def tree_digest(root: Path) -> dict[str, str]:
    """Every file, folder and link under root: content hash, mode, link target."""
    out = {}
    for d, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            p = Path(d) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = f"dir:{oct(p.stat().st_mode)}"
            else:
                out[rel] = f"{oct(p.stat().st_mode)}:" + hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass(frozen=True)
class Case:
    id: str
    args: Callable[[World], list[str]]
    says: tuple[str, ...]                      # the error line names these (flag, file, fix)
    command: str = "profile"
    cwd: str | None = None                     # world attribute to chdir into
    env: dict = field(default_factory=dict)


def S(*extra: str | Callable[[World], str], store: str = "store__zarr") -> Callable[[World], list[str]]:
    """steer args: the world's store, en -> ru on the corpus, a LAPE loose enough for a tiny model to
    select neurons for both, a fresh --out, plus `extra` (callables get the world)."""
    def build(w: World) -> list[str]:
        args = [getattr(w, store), "--source", "en", "--target", "ru", "--prompts", w.corpus, "--top-rate", "0.5",
                "--filter-rate", "0.5", "--activation-bar-ratio", "0.5", "--out", str(w.root / "new_steer")]
        return args + [x(w) if callable(x) else x for x in extra]
    return build


def P(*extra: str | Callable[[World], str], out: str | None = NEW, model: str | None = "model",
      corpus: str | None = "corpus") -> Callable[[World], list[str]]:
    """profile args: the world's model and corpus, a fresh --out, plus `extra` (callables get the world)."""
    def build(w: World) -> list[str]:
        args = []
        if model:
            args += ["--model", getattr(w, model)]
        if corpus:
            args += ["--corpus", getattr(w, corpus)]
        if out is not None:
            args += ["--out", out if "://" in out or out in (".", "") else getattr(w, out.replace(".", "__"))]
        return args + [e(w) if callable(e) else e for e in extra] + ["--no-progress"]
    return build


CASES = [
    # --- --out: never write into or delete what langneurons did not create ------------------
    Case("out-cwd", P(out="."), ("--out .", "is a folder of other files", "choose a new path"), cwd="home"),
    Case("out-corpus-folder", P(out="corpus"), ("corpus", "never writes into or deletes")),
    Case("out-model-folder", P(out="model"), ("model", "never writes into or deletes")),
    Case("out-file-url", P(lambda w: "--out", lambda w: "file://" + w.home, out=None), ("file://", "choose a new path")),
    Case("out-is-a-file", P(out="file.txt"), ("file.txt", "is a file")),
    Case("overwrite-foreign-folder", P("--overwrite", out="home"), ("home", "never writes into or deletes")),
    Case("overwrite-cwd", P("--overwrite", out="."), ("--out .", "never writes into"), cwd="home"),
    Case("overwrite-foreign-zarr", P("--overwrite", out="other.zarr"), ("other.zarr", "Zarr store that langneurons did not make")),
    Case("overwrite-store-with-user-file", P("--overwrite", out="store_extra.zarr"), ("--overwrite", "notes.txt", "nothing was deleted")),
    Case("overwrite-store-with-symlink", P("--overwrite", out="store_link.zarr"), ("n_fired/c/home", "nothing was deleted")),
    Case("overwrite-store-with-user-folder", P("--overwrite", out="store_dir.zarr"), ("partials/my_analysis/", "nothing was deleted")),
    Case("overwrite-store-with-user-group", P("--overwrite", out="store_group.zarr"), ("my_analysis", "nothing was deleted")),
    Case("overwrite-store-with-inner-store", P("--overwrite", out="store_inner.zarr"), ("inner.zarr", "nothing was deleted")),
    Case("overwrite-store-with-empty-group", P("--overwrite", out="store_emptygroup.zarr"),
         ("partials/mine", "nothing was deleted")),
    Case("overwrite-store-node-of-another-kind", P("--overwrite", out="store_wrongkind.zarr"),
         ("partials/shard_stop/zarr.json", "nothing was deleted")),
    Case("overwrite-store-with-chunk-like-file", P("--overwrite", out="store_chunklike.zarr"),
         ("act_sum/c/7/0/0", "nothing was deleted")),
    Case("overwrite-store-with-edited-attributes", P("--overwrite", out="store_edited.zarr"),
         ("store_edited.zarr", "were edited", "nothing was deleted")),
    Case("info-edited-attributes", lambda w: [w.store_edited__zarr], ("store_edited.zarr", "were edited"), command="info"),
    Case("verify-edited-attributes", lambda w: [w.store_edited__zarr, "--verify"], ("1 problem",), command="info"),
    Case("out-unset-variable", P(lambda w: "--out", lambda w: "$LANGNEURONS_UNSET_VAR/r.zarr", out=None),
         ("--out", "$LANGNEURONS_UNSET_VAR is not set")),
    Case("out-unknown-user", P(lambda w: "--out", lambda w: "~nosuchuser_ln/r.zarr", out=None),
         ("--out", "no user 'nosuchuser_ln'")),
    Case("score-unset-variable", lambda w: ["$LANGNEURONS_UNSET_VAR/s.zarr"], ("$LANGNEURONS_UNSET_VAR is not set",),
         command="score"),
    Case("overwrite-symlink-to-home", P("--overwrite", out="link_to_home"), ("link_to_home", "never writes into")),
    Case("out-broken-symlink", P(out="broken_link"), ("broken_link", "broken symbolic link")),
    Case("resume-nothing-there", P("--resume"), ("--resume", "no results store", "without --resume")),
    Case("resume-foreign-folder", P("--resume", out="home"), ("home", "never writes into")),
    Case("store-exists-no-flag", P(out="store.zarr"), ("store.zarr", "already exists", "--resume", "--overwrite")),
    Case("resume-other-threshold", P("--resume", "--threshold", "0.5", "--shard-size", "2", "--batch-tokens", "64",
                                     out="store.zarr"), ("cannot resume", "threshold")),
    Case("out-empty", P(out=""), ("--out is empty",)),
    # --- config fields, each checked before anything runs --------------------------------------
    Case("threshold-nan", P("--threshold", "nan"), ("--threshold nan", "finite")),
    Case("threshold-inf", P("--threshold", "inf"), ("--threshold inf", "finite")),
    Case("threshold-minus-inf", P("--threshold=-inf"), ("--threshold -inf", "finite")),
    Case("threshold-not-a-number", P("--threshold", "abc"), ("--threshold", "invalid float value")),
    Case("site", P("--site", "attn"), ("--site 'attn'", "gate, down_in")),
    Case("backend", P("--backend", "foo"), ("--backend 'foo'", "hf, vllm")),
    Case("kernel", P("--kernel", "foo"), ("--kernel 'foo'", "reference")),
    Case("device", P("--device", "tpu"), ("--device 'tpu'", "cuda:N")),
    Case("dtype", P("--dtype", "float8"), ("--dtype 'float8'", "bfloat16")),
    Case("corpus-format", P("--corpus-format", "xml"), ("--corpus-format 'xml'", "tmx")),
    Case("threads-per-worker", P("--threads-per-worker", "0"), ("--threads-per-worker must be >= 1",)),
    Case("batch-tokens", P("--batch-tokens", "0"), ("--batch-tokens must be >= 1",)),
    Case("max-length-zero", P("--max-length", "0"), ("--max-length must be >= 1",)),
    Case("shard-size", P("--shard-size", "0"), ("--shard-size must be >= 1",)),
    Case("max-sentences", P("--max-sentences", "0"), ("--max-sentences must be >= 1",)),
    Case("shard-tokens-zero", P("--shard-tokens", "0"), ("--shard-tokens must be >= 1",)),
    Case("shard-tokens-beyond-int32", P("--shard-tokens", "3000000000"), ("--shard-tokens 3,000,000,000", "int32")),
    Case("min-shards", P("--min-shards", "0"), ("--min-shards must be >= 1",)),
    Case("keep-partials", P("--keep-partials", "some"), ("--keep-partials 'some'", "counts, all, none")),
    Case("workers", P("--workers", "-1"), ("--workers must be >= 0",)),
    Case("max-retries", P("--max-retries", "-1"), ("--max-retries must be >= 0",)),
    Case("bin-edges-order", P("--bin-edges", "1,0"), ("--bin-edges", "strictly increasing")),
    Case("bin-edges-nan", P("--bin-edges", "0,nan"), ("--bin-edges", "non-finite")),
    Case("gpu-memory", P("--vllm-gpu-memory-utilization", "1.5"), ("--vllm-gpu-memory-utilization", "(0, 1]")),
    Case("tensor-parallel", P("--vllm-tensor-parallel", "0"), ("--vllm-tensor-parallel must be >= 1",)),
    Case("resume-and-overwrite", P("--resume", "--overwrite"), ("--resume and --overwrite",)),
    Case("languages-twice", P("--languages", "en,en"), ("--languages", "twice")),
    Case("language-code-path", P("--languages", "en,../fr"), ("--languages", "'../fr'", "ASCII letters")),
    Case("config-unknown-field", P(lambda w: "--config", lambda w: str(w.root / "unknown.yaml")), ("unknown fields", "modle")),
    Case("config-nan-threshold", P(lambda w: "--config", lambda w: str(w.root / "nan.yaml")), ("--threshold nan", "finite")),
    Case("config-string-for-int", P(lambda w: "--config", lambda w: str(w.root / "stringint.json")), ("--shard-size must be int", "'5'")),
    Case("config-missing", P(lambda w: "--config", lambda w: str(w.root / "missing.yaml")), ("missing.yaml", "does not exist")),
    # --- the model, checked before the store is created ----------------------------------------
    Case("max-length-beyond-positions", P("--max-length", "1000"), ("--max-length 1000", "position limit of 128", "--max-length 128")),
    Case("vllm-not-installed", P("--backend", "vllm"), ("--backend vllm needs vLLM",)),
    Case("kernel-triton-on-cpu", P("--kernel", "triton"), ("triton",), env={"TRITON_INTERPRET": None}),
    Case("device-cuda-missing", P("--device", "cuda"), ("--device cuda", "no CUDA")),
    Case("fused-mlp-gpt2", P("--fused-mlp", model="gpt2"), ("--fused-mlp", "gpt2")),
    Case("fused-mlp-vllm", P("--fused-mlp", "--backend", "vllm"), ("--fused-mlp", "--backend hf")),
    Case("compile-vllm", P("--compile", "--backend", "vllm"), ("--compile is the hf backend's", "--vllm-eager")),
    Case("compile-fused-mlp", P("--compile", "--fused-mlp"), ("--compile and --fused-mlp cannot be combined",)),
    Case("model-missing", P(lambda w: "--model", lambda w: str(w.root / "nope"), model=None), ("nope", "no such folder")),
    Case("model-hub-offline", P(lambda w: "--model", lambda w: "someorg/somemodel", model=None), ("someorg/somemodel", "HF_HUB_OFFLINE")),
    Case("model-is-a-file", P(model="file.txt"), ("file.txt", "is a file")),
    Case("model-no-tokenizer", P(model="no_tokenizer"), ("no_tokenizer", "tokenizer")),
    Case("model-no-weights", P(model="no_weights"), ("no_weights", "no weight files")),
    Case("model-truncated-new-out", P(model="truncated"), ("truncated", "cannot be read", "download or save the model again")),
    Case("model-truncated-overwrite", P("--overwrite", model="truncated", out="store.zarr"),
         ("truncated", "cannot be read", "incomplete or damaged")),
    Case("model-missing-layer", P("--overwrite", model="missing_layer", out="store.zarr"),
         ("missing_layer", "missing tensors model.layers.2.", "randomly initialised")),
    Case("model-extra-layer", P(model="extra_layer"), ("extra_layer", "unexpected tensors model.layers.1.")),
    Case("model-other-shape", P(model="other_shape"), ("other_shape", "shape differs from what config.json asks for")),
    Case("resume-weights-changed", P("--resume", "--shard-size", "2", "--batch-tokens", "64", model="one_byte",
                                     out="store.zarr"), ("cannot resume", "model_fingerprint")),
    Case("resume-tokenizer-changed", P("--resume", "--shard-size", "2", "--batch-tokens", "64", model="other_tokenizer",
                                       out="store.zarr"), ("cannot resume", "tokenizer_fingerprint")),
    Case("ablate-tokenizer-changed", lambda w: [w.store__zarr, "--model", w.other_tokenizer],
         ("other_tokenizer", "tokenizer", "not the one profiled", "--allow-model-mismatch"), command="ablate"),
    Case("ablate-weights-changed", lambda w: [w.store__zarr, "--model", w.one_byte],
         ("one_byte", "not the one profiled", "--allow-model-mismatch"), command="ablate"),
    Case("model-unsupported", P(model="unsupported"), ("'granitemoe' is not supported", "supported:")),
    # --- the corpus -----------------------------------------------------------------------------
    Case("corpus-bare-cr", P(corpus="cr"), ("en.txt:1", "carriage return", "tr")),
    Case("corpus-empty-line", P(corpus="empty_line"), ("en.txt:2", "empty line")),
    Case("corpus-misaligned", P(corpus="misaligned"), ("fr.txt has 1 lines", "aligned")),
    Case("corpus-not-utf8", P(corpus="latin1"), ("invalid UTF-8", "iconv")),
    Case("corpus-missing", P(lambda w: "--corpus", lambda w: str(w.root / "nope_corpus"), corpus=None), ("nope_corpus", "no such file")),
    Case("corpus-tsv-code-path", P(corpus="slash.tsv"), ("slash.tsv:1", "'../fr'", "ASCII letters")),
    Case("corpus-jsonl-code-path", P(corpus="slash.jsonl"), ("slash.jsonl:1", "'fr/x'")),
    Case("unaligned-one-file", P("--unaligned", corpus="pair__tsv"), ("pair.tsv", "--unaligned reads a directory", "drop --unaligned")),
    Case("unaligned-missing-field", P("--unaligned", corpus="mono"), ("en.jsonl:2", '"text"', "--text-field")),
    Case("per-language-ragged", P(corpus="ragged"), ("different row counts", "'en': 2", "'fr': 1", "--unaligned")),
    Case("budget-zero", P("--max-tokens-per-language", "0"), ("--max-tokens-per-language must be >= 1",)),
    Case("budget-below-first-row", P("--unaligned", "--languages", "fr", "--max-tokens-per-language", "1", corpus="ragged"),
         ("first row of 'fr'", "--max-tokens-per-language 1", "raise the budget")),
    Case("long-documents-refuse", P("--unaligned", "--languages", "fr", "--long-documents", "refuse", "--max-length", "16",
                                    corpus="mono"), ("fr row 2", "more than --max-length 16", "--long-documents window")),
    # --- other commands -------------------------------------------------------------------------
    Case("score-foreign", lambda w: [w.home], ("home", "not a langneurons results store"), command="score"),
    Case("score-missing", lambda w: [str(w.root / "nothing.zarr")], ("nothing.zarr", "does not exist"), command="score"),
    Case("info-foreign", lambda w: [w.corpus], ("corpus", "not a langneurons results store"), command="info"),
    Case("verify-foreign", lambda w: [w.corpus, "--verify"], ("corpus", "not a langneurons results store"), command="info"),
    Case("ablate-model-moved", lambda w: [w.store__zarr, "--model", str(w.root / "gone")], ("gone", "no such"), command="ablate"),
    Case("ablate-other-model", lambda w: [w.store__zarr, "--model", w.gpt2], ("gpt2", "not the one profiled", "--allow-model-mismatch"), command="ablate"),
    Case("score-report-into-foreign-folder", lambda w: [w.store__zarr, "--plot", "--out", w.home],
         ("--out", "home", "folder of other files", "choose another --out"), command="score"),
    Case("score-report-onto-a-file", lambda w: [w.store__zarr, "--export", "--out", w.file__txt],
         ("file.txt", "is a file"), command="score"),
    Case("score-report-holding-a-link", lambda w: [w.store__zarr, "--export", "--out", str(w.root / "report_link")],
         ("report_link", "neurons.csv", "a link or a folder", "nothing was written"), command="score"),
    Case("ablate-out-is-a-link", lambda w: [w.store__zarr, "--out", str(w.root / "link_to_notes.csv")],
         ("link_to_notes.csv", "symbolic link"), command="ablate"),
    Case("ablate-out-overwrites-a-file", lambda w: [w.store__zarr, "--out", w.file__txt],
         ("--out", "file.txt", "choose a new file name"), command="ablate"),
    Case("ablate-foreign", lambda w: [w.home], ("home", "not a langneurons results store"), command="ablate"),
    Case("steer-foreign", lambda w: [w.home, "--source", "en", "--target", "fr"], ("home", "not a langneurons results store"),
         command="steer"),
    Case("steer-no-target", lambda w: [w.store__zarr, "--source", "en"], ("--target is required",), command="steer"),
    Case("steer-target-is-source", S("--target", "en"), ("--target en is the --source language",), command="steer"),
    Case("steer-unknown-language", S("--target", "de"), ("--target de", "not a language of", "en, fr, ru"), command="steer"),
    Case("steer-language-id-unknown", S("--target", "tlh", store="store_tlh__zarr"),
         ("tlh", "language-ID model", "does not know", "it knows"), command="steer"),
    Case("steer-empty-selection", S(lambda w: "--masks", lambda w: w.masks_no_ru__npz),
         ("no neurons are selected for --target ru", "masks_no_ru.npz"), command="steer"),
    Case("steer-masks-other-model", S(lambda w: "--masks", lambda w: w.masks_other__npz),
         ("masks_other.npz", "neuron 99", "another model"), command="steer"),
    Case("steer-masks-not-masks", S(lambda w: "--masks", lambda w: w.corrupt_masks__pt),
         ("corrupt_masks.pt", "cannot be read", "score --export"), command="steer"),
    Case("steer-layers-beyond", S("--layers", "5-9"), ("--layers 5-9", "steerable layers are 0-1"), command="steer"),
    Case("steer-layers-reversed", S("--layers", "1-0"), ("--layers 1-0", "reversed"), command="steer"),
    Case("steer-alpha-with-replace", S("--mode", "replace", "--alpha", "2"), ("--alpha", "--mode replace"), command="steer"),
    Case("steer-weights-changed", S(lambda w: "--model", lambda w: w.one_byte),
         ("one_byte", "not the one profiled", "--allow-model-mismatch"), command="steer"),
    Case("steer-other-model", S(lambda w: "--model", lambda w: w.gpt2), ("gpt2", "not the one profiled"), command="steer"),
    Case("steer-beyond-positions", S("--max-new-tokens", "500"), ("--max-new-tokens 500", "beyond the model's 128"),
         command="steer"),
    Case("steer-out-foreign", S(lambda w: "--out", lambda w: w.home), ("--out", "home", "folder of other files"),
         command="steer"),
    Case("steer-out-inside-a-store", S(lambda w: "--out", lambda w: str(w.root / "store.zarr" / "steer")),
         ("store.zarr/steer", "inside the Zarr store", "outside it"), command="steer"),
    Case("steer-out-a-link", S(lambda w: "--out", lambda w: w.link_to_home), ("link_to_home", "symbolic link"),
         command="steer"),
    Case("steer-experts-dense-store", S("--experts"), ("--experts", "dense llama model", "leave --experts out"),
         command="steer"),
    Case("steer-experts-vllm", S("--experts", "--backend", "vllm"), ("--experts", "--backend hf only"), command="steer"),
    Case("steer-eager-hf", S("--vllm-eager"), ("--vllm-eager needs --backend vllm",), command="steer"),
    Case("steer-url-store-without-out", lambda w: ["memory://results/x.zarr", "--source", "en", "--target", "fr"],
         ("memory://results/x.zarr is a URL", "give --out"), command="steer"),
    Case("steer-out-a-report", S(lambda w: "--out", lambda w: str(w.root / "report_link")),
         ("report_link", "folder of other files"), command="steer"),
]


def test_matrix_has_at_least_40_cases():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_refused(case: Case, world: World, capsys, monkeypatch):
    for k, v in case.env.items():
        if v is None:
            monkeypatch.delenv(k, raising=False)
        else:
            monkeypatch.setenv(k, v)
    if case.cwd:
        monkeypatch.chdir(getattr(world, case.cwd))
    args = case.args(world)
    before = tree_digest(world.root)
    capsys.readouterr()
    try:
        rc = main([case.command, *args])
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2, (case.id, rc, err)
    assert len(lines) == 1, (case.id, err)
    assert "error:" in lines[0] and "Traceback" not in err, (case.id, err)
    for s in case.says:
        assert s in lines[0], (case.id, s, lines[0])
    assert not (world.root / NEW).exists(), f"{case.id}: a store was created"
    assert tree_digest(world.root) == before, f"{case.id}: a pre-existing file changed"
    if os.environ.get("SHOW_ERRORS"):
        print(f"\n{case.id}: {lines[0]}", file=sys.__stdout__)


def test_memory_url_foreign_prefix_is_refused_and_untouched(world, capsys):
    """fsspec URLs follow the same rules: a prefix of other objects is never written or emptied."""
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/someone/data/table.csv", b"a,b\n1,2\n")
    for extra in ([], ["--overwrite"]):
        rc = main(["profile", "--model", world.model, "--corpus", world.corpus, "--out", "memory://someone/data",
                   "--no-progress", *extra])
        err = capsys.readouterr().err
        assert rc == 2 and "never writes into or deletes" in err, err
        assert fs.find("/someone") == ["/someone/data/table.csv"]
        assert fs.cat("/someone/data/table.csv") == b"a,b\n1,2\n"


def test_memory_url_store_is_created_and_overwritten(world, capsys):
    """...and a store langneurons made there may be resumed and overwritten like a local one."""
    import xarray as xr

    url = "memory://results/run.zarr"
    args = ["profile", "--model", world.model, "--corpus", world.corpus, "--out", url, "--shard-size", "4",
            "--batch-tokens", "64", "--no-progress"]
    assert main(args) == 0
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    ds = xr.open_zarr(url)
    assert ds.attrs["complete"] is True and ds.sizes["language"] == 3


def test_score_writes_a_report_again_into_its_own_folder(world, tmp_path, capsys):
    """An earlier report may be rewritten (it carries its marker); nothing else is written there."""
    out = tmp_path / "report"
    for _ in range(2):
        assert main(["score", world.store__zarr, "--export", "--out", str(out)]) == 0, capsys.readouterr().err
    assert {p.name for p in out.iterdir()} == {"langneurons-report.json", "neurons.csv", "neurons.parquet",
                                               "masks.pt", "masks.npz"}
