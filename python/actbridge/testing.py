"""Tiny tokenizers and random-init causal LMs for tests, smoke runs and examples without the
real models (nothing is downloaded: the tokenizers train on the bundled corpus in ~0.1 s)."""

from __future__ import annotations

from typing import Any

from actbridge.texts import load_corpus

ARCHS = ("llama", "qwen2", "qwen3", "gemma3", "gpt2", "gpt_neox")


def tiny_tokenizer(kind: str = "bpe", padding_side: str = "right") -> Any:
    """A fast tokenizer trained on the bundled corpus in ~0.1 s: "bpe" (byte-level, adds <s>)
    or "unigram" (metaspace, no BOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "bpe":
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        tk.train_from_iterator(
            load_corpus(),
            trainers.BpeTrainer(
                vocab_size=400,
                special_tokens=["<pad>", "<s>", "</s>"],
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                show_progress=False,
            ),
        )
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        specials = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    else:
        tk = Tokenizer(models.Unigram())
        tk.pre_tokenizer = pre_tokenizers.Metaspace()
        tk.decoder = decoders.Metaspace()
        tk.train_from_iterator(
            load_corpus(),
            trainers.UnigramTrainer(
                vocab_size=300,
                special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"],
                unk_token="<unk>",
                show_progress=False,
            ),
        )
        specials = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    # Causal LM tokenizers return no token_type_ids (transformers < 5 would add them by default,
    # and generate() rejects them for decoder-only models).
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        padding_side=padding_side,
        model_input_names=["input_ids", "attention_mask"],
        **specials,
    )
    tok.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant:{% endif %}"
    )
    return tok


def tiny_model(
    arch: str = "llama", vocab: int = 400, layers: int = 4, d: int = 32, seed: int = 0, **config: Any
) -> Any:
    """A random-init causal LM of architecture ``arch`` (float32, eval mode); ``config``: more
    config fields (e.g. ``tie_word_embeddings=True``)."""
    import torch
    import transformers as T

    common: dict[str, Any] = {"vocab_size": vocab, **config}
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
