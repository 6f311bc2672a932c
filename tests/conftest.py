"""Shared helpers for the store tests."""

from __future__ import annotations

import numpy as np
import pytest


def bf16_round(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 -> float32 in numpy (round to nearest even), the reference."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint32) << 16
    out = rounded.astype(np.uint32).view(np.float32)
    return np.where(np.isnan(x), np.float32(np.nan), out)


def stored(x: np.ndarray, dtype: str) -> np.ndarray:
    """What reading back ``x`` stored as ``dtype`` must give, as float32."""
    if dtype == "float32":
        return x.astype(np.float32)
    if dtype == "float16":
        return x.astype(np.float16).astype(np.float32)
    if x.dtype == np.float64:  # one rounding, straight from float64
        return _bf16_round_f64(x)
    return bf16_round(x.astype(np.float32))


def _bf16_round_f64(x: np.ndarray) -> np.ndarray:
    """float64 -> nearest bfloat16 (ties to even), without a float32 detour."""
    m, e = np.frexp(x)  # x = m * 2**e, 0.5 <= |m| < 1
    q = np.round(m * 256.0) / 256.0  # 8 significant bits; np.round ties to even
    return np.ldexp(q, e).astype(np.float32)


@pytest.fixture
def store_path(tmp_path):
    return tmp_path / "store"


# --- tiny tokenizers and random-init models for the collection tests -------------------------

ARCHS = ("llama", "qwen2", "qwen3", "gemma3", "gpt2", "gpt_neox")


def tiny_tokenizer(kind: str = "bpe", padding_side: str = "right"):
    """A fast tokenizer trained on the bundled corpus in ~0.1 s: "bpe" (byte-level, adds <s>)
    or "unigram" (metaspace, no BOS)."""
    import actbridge as ab
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "bpe":
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        tk.train_from_iterator(
            ab.load_corpus(),
            trainers.BpeTrainer(
                vocab_size=400,
                special_tokens=["<pad>", "<s>", "</s>"],
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            ),
        )
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        specials = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    else:
        tk = Tokenizer(models.Unigram())
        tk.pre_tokenizer = pre_tokenizers.Metaspace()
        tk.decoder = decoders.Metaspace()
        tk.train_from_iterator(
            ab.load_corpus(),
            trainers.UnigramTrainer(
                vocab_size=300, special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"], unk_token="<unk>"
            ),
        )
        specials = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, padding_side=padding_side, **specials)
    tok.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant:{% endif %}"
    )
    return tok


def tiny_model(arch: str = "llama", vocab: int = 400, layers: int = 4, d: int = 32, seed: int = 0):
    """A random-init causal LM of architecture ``arch`` (float32, eval mode)."""
    import torch
    import transformers as T

    common = {"vocab_size": vocab}
    if arch in ("llama", "qwen2", "qwen3", "gemma3"):
        cfg_cls, model_cls = {
            "llama": (T.LlamaConfig, T.LlamaForCausalLM),
            "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM),
            "qwen3": (T.Qwen3Config, T.Qwen3ForCausalLM),
            "gemma3": (T.Gemma3TextConfig, T.Gemma3ForCausalLM),
        }[arch]
        extra = {"head_dim": 8} if arch in ("qwen3", "gemma3") else {}
        cfg = cfg_cls(
            hidden_size=d,
            intermediate_size=2 * d,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            **common,
            **extra,
        )
    elif arch == "gpt2":
        cfg_cls, model_cls = T.GPT2Config, T.GPT2LMHeadModel
        cfg = cfg_cls(n_embd=d, n_layer=layers, n_head=4, n_positions=256, **common)
    else:
        cfg_cls, model_cls = T.GPTNeoXConfig, T.GPTNeoXForCausalLM
        cfg = cfg_cls(
            hidden_size=d,
            intermediate_size=2 * d,
            num_hidden_layers=layers,
            num_attention_heads=4,
            max_position_embeddings=256,
            **common,
        )
    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    # Random init leaves the residual stream tiny; scale embeddings so the rows are not all ~0.
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(20.0)
    return model
