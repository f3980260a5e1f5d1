"""Tiny random models of every supported architecture, built offline from configs.

A byte-level BPE tokenizer is trained in-process on a few sentences (no hub access), wrapped as a
transformers fast tokenizer whose post-processor adds BOS (and optionally EOS), so the special-
token rule is exercised on every architecture; `add_bos=False` makes one that leaves BOS out, as
many GGUF conversions do (the BOS rule's case).
"""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 320
D_FF = 37  # prime, so no kernel can get away with power-of-two assumptions
E_FF = 23  # an expert's width in the MoE models (prime, and not D_FF: the two must not be confused)
N_EXPERTS, TOP_K = 5, 2

TRAIN_TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "le renard brun saute par-dessus le chien paresseux",
    "быстрая коричневая лиса прыгает через ленивую собаку",
    "तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है",
    "敏捷的棕色狐狸跳过了懒狗",
]

SENTENCES = {
    "en": ["the dog sleeps", "a fox jumps over the lazy dog today", "hello", "brown dogs and quick foxes run"],
    "fr": ["le chien dort", "un renard saute", "bonjour à tous les chiens", "le renard brun"],
    "ru": ["собака спит", "лиса прыгает через собаку", "привет", "коричневая лиса"],
}


def _common(**kw):
    return dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0, **kw)


def config_for(arch: str):
    """A tiny config of `arch` with d_ff = D_FF and 2 layers."""
    import transformers as tf

    h, L = 32, 2
    if arch in ("llama", "mistral", "qwen2", "qwen3"):
        cls = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config,
               "qwen3": tf.Qwen3Config}[arch]
        return cls(**_common(hidden_size=h, intermediate_size=D_FF, num_hidden_layers=L,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                             max_position_embeddings=128, tie_word_embeddings=False))
    if arch in ("gemma", "gemma2"):
        cls = tf.GemmaConfig if arch == "gemma" else tf.Gemma2Config
        return cls(**_common(hidden_size=h, intermediate_size=D_FF, num_hidden_layers=L,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                             max_position_embeddings=128, hidden_act="gelu_pytorch_tanh",
                             hidden_activation="gelu_pytorch_tanh"))
    if arch == "gemma3_text":
        return tf.Gemma3TextConfig(**_common(hidden_size=h, intermediate_size=D_FF, num_hidden_layers=L,
                                             num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                             max_position_embeddings=128, hidden_activation="gelu_pytorch_tanh",
                                             sliding_window=4))  # shorter than the sentences: both kinds of layer
    if arch == "gemma3":  # the multimodal checkpoint layout: a tiny vision tower beside the text model
        vision = tf.SiglipVisionConfig(hidden_size=h, intermediate_size=D_FF, num_hidden_layers=1,
                                       num_attention_heads=4, image_size=28, patch_size=14)
        return tf.Gemma3Config(text_config=config_for("gemma3_text"), vision_config=vision, mm_tokens_per_image=4,
                               image_token_index=VOCAB - 3, boi_token_index=VOCAB - 2, eoi_token_index=VOCAB - 1,
                               **_common())
    if arch in ("cohere", "cohere2", "olmo2", "phi3"):
        cls = {"cohere": tf.CohereConfig, "cohere2": tf.Cohere2Config, "olmo2": tf.Olmo2Config,
               "phi3": tf.Phi3Config}[arch]
        extra = {"cohere2": dict(sliding_window=4), "phi3": dict(original_max_position_embeddings=128)}.get(arch, {})
        return cls(**_common(hidden_size=h, intermediate_size=D_FF, num_hidden_layers=L, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=128, **extra))
    # Mixture of experts: 5 experts, top-2, experts E_FF wide. Qwen2-MoE: layer 0 a dense MLP, layer
    # 1 sparse with a shared expert (both D_FF wide); Qwen3-MoE: layer 0 sparse, layer 1 dense, and
    # renormalised top-k; Mixtral, OLMoE and GPT-OSS have no dense FFN (d_ff = 0).
    moe = dict(hidden_size=h, num_hidden_layers=L, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=128, num_experts_per_tok=TOP_K)
    if arch == "mixtral":
        return tf.MixtralConfig(**_common(intermediate_size=E_FF, num_local_experts=N_EXPERTS, head_dim=8, **moe))
    if arch == "qwen2_moe":
        return tf.Qwen2MoeConfig(**_common(intermediate_size=D_FF, moe_intermediate_size=E_FF, num_experts=N_EXPERTS,
                                           shared_expert_intermediate_size=D_FF, mlp_only_layers=[0], **moe))
    if arch == "qwen3_moe":
        return tf.Qwen3MoeConfig(**_common(intermediate_size=D_FF, moe_intermediate_size=E_FF, num_experts=N_EXPERTS,
                                           mlp_only_layers=[1], norm_topk_prob=True, head_dim=8, **moe))
    if arch == "olmoe":
        return tf.OlmoeConfig(**_common(intermediate_size=E_FF, num_experts=N_EXPERTS, **moe))
    if arch == "gpt_oss":
        # (its YaRN rope scales 4096 original positions by 32: the position limit says so)
        return tf.GptOssConfig(**_common(intermediate_size=E_FF, num_local_experts=N_EXPERTS, head_dim=8,
                                         sliding_window=4, **{**moe, "max_position_embeddings": 131072}))
    if arch == "gpt2":
        return tf.GPT2Config(**_common(n_embd=h, n_inner=D_FF, n_layer=L, n_head=4, n_positions=128))
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(**_common(hidden_size=h, intermediate_size=D_FF, num_hidden_layers=L,
                                          num_attention_heads=4, max_position_embeddings=128))
    if arch == "bloom":  # BLOOM's MLP is fixed at 4*hidden: d_ff = 128 here
        return tf.BloomConfig(**_common(hidden_size=h, n_layer=L, n_head=4))
    if arch == "opt":
        return tf.OPTConfig(**_common(hidden_size=h, ffn_dim=D_FF, num_hidden_layers=L,
                                      num_attention_heads=4, max_position_embeddings=128,
                                      word_embed_proj_dim=h))
    if arch == "xglm":
        return tf.XGLMConfig(**_common(d_model=h, ffn_dim=D_FF, num_layers=L, attention_heads=4,
                                       max_position_embeddings=128))
    raise KeyError(arch)


def make_tokenizer(add_eos: bool = False, add_bos: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TRAIN_TEXT * 4, trainer)
    single = ("<s> " if add_bos else "") + ("$A </s>" if add_eos else "$A")
    tok.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[("<s>", 1), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


def make_tiny_model(arch: str, path: Path, *, add_eos: bool = False, add_bos: bool = True, seed: int = 0) -> Path:
    """Save a tiny random `arch` model and tokenizer under `path`; returns `path`."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config_for(arch))
    # Random init puts most gate values near 0; widen them so thresholds and bins all get hits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 or (p.dim() == 3 and "experts" in name):  # MoE: fused [E, ., .] expert weights
                p.mul_(8.0)
    model.save_pretrained(path)
    make_tokenizer(add_eos, add_bos).save_pretrained(path)
    return path


def tiny_vllm(arch: str, path, add_eos=False, positions=512, d_ff=101, add_bos=True):
    """A tiny `arch` model vLLM's CPU build runs: its attention wants head_dim 64 (and tensor
    parallel 2 an even d_ff; 101 is prime)."""
    import transformers as tf

    torch.manual_seed(0)
    cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "phi3": tf.Phi3Config, "cohere": tf.CohereConfig,
           "gemma3_text": tf.Gemma3TextConfig}[arch]
    extra = {"phi3": dict(original_max_position_embeddings=positions),
             "gemma3_text": dict(hidden_activation="gelu_pytorch_tanh", sliding_window=4)}.get(arch, {})
    cfg = cls(vocab_size=320, bos_token_id=1, eos_token_id=2, pad_token_id=0, hidden_size=128,
              intermediate_size=d_ff, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
              head_dim=64, max_position_embeddings=positions, tie_word_embeddings=False, **extra)
    m = tf.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    m.save_pretrained(path)
    make_tokenizer(add_eos=add_eos, add_bos=add_bos).save_pretrained(path)
    return str(path)


def write_corpus(d: Path, repeat: int = 3) -> str:
    """SENTENCES as a textdir corpus (each language's sentences `repeat` times) in folder `d`."""
    d.mkdir(parents=True, exist_ok=True)
    for lang, sents in SENTENCES.items():
        (d / f"{lang}.txt").write_text("\n".join(sents * repeat) + "\n", encoding="utf-8")
    return str(d)


def start_cli(argv: list[str], faults: dict | None = None):
    """`langneurons <argv>` in a subprocess and session of its own (no Ray address inherited), with
    the faults of tests/faults.py switched on as `faults` says; stderr is kept for failure messages."""
    import os
    import subprocess
    import sys

    from faults import environment

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if faults is not None:
        env.update(environment(faults))
    return subprocess.Popen([sys.executable, "-m", "langneurons.cli", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def committed_count(out: Path) -> int:
    """Shards committed so far in the store at `out` (0 while it is being created)."""
    import zarr

    try:
        return int(zarr.open_array(str(out / "partials" / "committed"), mode="r")[:].sum())
    except Exception:
        return 0


def wait_for_commits(out: Path, proc, n: int) -> None:
    """Wait until `n` shards are committed while `proc` still runs (it is about to be disturbed):
    for the event, however long a busy machine takes, or until the run ends without it."""
    import time

    while committed_count(out) < n:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {n} commits: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be disturbed"
