"""Tiny random models and a tiny tokenizer built in code: no downloads, fixed seeds."""
from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM


def tiny_config(family: str = "llama", **overrides):
    common = dict(vocab_size=259, hidden_size=48, intermediate_size=64, num_hidden_layers=6,
                  num_attention_heads=6, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
                  rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    common.update(overrides)
    if family == "llama":
        return LlamaConfig(**common)
    if family == "qwen2":
        return Qwen2Config(**common)
    raise ValueError(family)


def tiny_model(family: str = "llama", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cls = LlamaForCausalLM if family == "llama" else Qwen2ForCausalLM
    model = cls(tiny_config(family, **overrides)).eval()
    # Random init is near zero; widen it so that cutting a layer or channel visibly changes the logits.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                param.normal_(0, 0.2)
            elif "bias" in name:
                param.normal_(0, 0.1)
    return model


def tiny_tokenizer(vocab_size: int = 259) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with single-byte tokens plus a few specials (no merges)."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    specials = ["<unk>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(alphabet):
        if len(vocab) >= vocab_size:
            break
        vocab[ch] = len(vocab)
    bpe = models.BPE(vocab=vocab, merges=[], unk_token="<unk>")
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<unk>")


@pytest.fixture(params=["llama", "qwen2"])
def family(request):
    return request.param


@pytest.fixture
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def model_dir(tmp_path):
    """A tiny random model and tokenizer saved as a Hugging Face directory."""
    path = tmp_path / "tiny"
    tiny_model().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path
