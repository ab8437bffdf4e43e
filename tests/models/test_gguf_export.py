"""GGUF export: readable by gguf-py, loaded back by transformers and llama.cpp with the same logits."""
from __future__ import annotations

import os

import gguf
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (AutoModelForCausalLM, AutoTokenizer, MistralConfig, MistralForCausalLM,
                          PreTrainedTokenizerFast)

from amoeba_search.models.gguf_export import write_gguf
from tests.conftest import tiny_config, tiny_model, tiny_tokenizer

# (family, overrides): the "cut" variants keep head_dim but have fewer heads, so that
# num_heads * head_dim != hidden_size, as in a width-pruned subnet.
VARIANTS = [("llama", {}), ("qwen2", {}),
            ("llama", {"num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 8}),
            ("qwen2", {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8})]
IDS = ["llama", "qwen2", "llama-cut", "qwen2-cut"]
VOCAB = 264  # model rows; the tokenizer below has 261 tokens, so three rows become [PAD] tokens
TEXT = "the theme: then 42 other tests\n"


def merged_tokenizer() -> PreTrainedTokenizerFast:
    """tiny_tokenizer plus two BPE merges (llama.cpp refuses a BPE vocabulary without merges)."""
    vocab = dict(tiny_tokenizer().get_vocab())
    for tok in ("Ġt", "he"):
        vocab[tok] = len(vocab)
    bpe = models.BPE(vocab=vocab, merges=[("Ġ", "t"), ("h", "e")], unk_token="<unk>")
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<unk>")


def field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def hf_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def smollm2_path() -> str:
    from amoeba_search.models.loading import ALIASES, ModelNotFoundError

    try:  # find the packaged file without importing the package (its chat-tool dependencies are not installed)
        return str(ALIASES["smollm2-135m"].path())
    except ModelNotFoundError as err:
        pytest.skip(str(err))


@pytest.mark.parametrize("family,overrides", VARIANTS, ids=IDS)
def test_metadata_tensor_names_shapes_and_dtypes(tmp_path, family, overrides):
    model, tok = tiny_model(family, vocab_size=VOCAB, **overrides), merged_tokenizer()
    cfg = model.config
    hidden, ffn, layers, hd = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.head_dim
    path = write_gguf(model, tok, tmp_path / "m.gguf", dtype="f16")
    r = gguf.GGUFReader(path)
    # llama.cpp's qwen2 graph needs heads * head_dim == hidden; a head-pruned Qwen2 goes out as "llama".
    arch = "qwen2" if family == "qwen2" and "num_attention_heads" not in overrides else "llama"
    assert field(r, "general.architecture") == arch
    expected = {"block_count": layers, "embedding_length": hidden, "feed_forward_length": ffn,
                "context_length": cfg.max_position_embeddings, "attention.head_count": cfg.num_attention_heads,
                "attention.head_count_kv": cfg.num_key_value_heads, "attention.key_length": hd,
                "attention.value_length": hd, "rope.dimension_count": hd, "vocab_size": VOCAB}
    for key, value in expected.items():
        assert field(r, f"{arch}.{key}") == value, key
    assert field(r, f"{arch}.rope.freq_base") == pytest.approx(cfg.rope_parameters["rope_theta"])
    assert field(r, f"{arch}.attention.layer_norm_rms_epsilon") == pytest.approx(cfg.rms_norm_eps)
    assert field(r, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16

    tensors = {t.name: t for t in r.tensors}
    q_out, kv_out = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    # GGUF lists shapes innermost first: (in_features, out_features) for a Linear weight.
    shapes = {"token_embd.weight": (hidden, VOCAB), "output.weight": (hidden, VOCAB), "output_norm.weight": (hidden,)}
    for i in range(layers):
        shapes.update({f"blk.{i}.attn_norm.weight": (hidden,), f"blk.{i}.ffn_norm.weight": (hidden,),
                       f"blk.{i}.attn_q.weight": (hidden, q_out), f"blk.{i}.attn_k.weight": (hidden, kv_out),
                       f"blk.{i}.attn_v.weight": (hidden, kv_out), f"blk.{i}.attn_output.weight": (q_out, hidden),
                       f"blk.{i}.ffn_gate.weight": (hidden, ffn), f"blk.{i}.ffn_up.weight": (hidden, ffn),
                       f"blk.{i}.ffn_down.weight": (ffn, hidden)})
        if family == "qwen2":
            shapes.update({f"blk.{i}.attn_q.bias": (q_out,), f"blk.{i}.attn_k.bias": (kv_out,),
                           f"blk.{i}.attn_v.bias": (kv_out,)})
    assert {n: tuple(int(d) for d in t.shape) for n, t in tensors.items()} == shapes
    for name, t in tensors.items():
        want = gguf.GGMLQuantizationType.F16 if len(shapes[name]) == 2 else gguf.GGMLQuantizationType.F32
        assert t.tensor_type == want, name

    assert field(r, "tokenizer.ggml.model") == "gpt2"
    assert field(r, "tokenizer.ggml.pre") == "gpt-2"
    tokens = field(r, "tokenizer.ggml.tokens")
    types = field(r, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == VOCAB
    assert tokens[:3] == ["<unk>", "<s>", "</s>"] and tokens[259:] == ["Ġt", "he", "[PAD261]", "[PAD262]", "[PAD263]"]
    assert types[:3] == [gguf.TokenType.CONTROL] * 3 and types[3] == gguf.TokenType.NORMAL
    assert types[-1] == gguf.TokenType.UNUSED
    assert field(r, "tokenizer.ggml.merges") == ["Ġ t", "h e"]
    assert (field(r, "tokenizer.ggml.bos_token_id"), field(r, "tokenizer.ggml.eos_token_id")) == (1, 2)
    assert field(r, "tokenizer.ggml.unknown_token_id") == 0
    assert field(r, "tokenizer.ggml.add_bos_token") is False


def test_tied_embeddings_omit_output_weight(tmp_path):
    model = tiny_model("llama", vocab_size=VOCAB, tie_word_embeddings=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    r = gguf.GGUFReader(write_gguf(model, merged_tokenizer(), tmp_path / "t.gguf"))
    names = {t.name for t in r.tensors}
    assert "token_embd.weight" in names and "output.weight" not in names


@pytest.mark.parametrize("family,overrides", VARIANTS, ids=IDS)
def test_transformers_round_trip_logits(tmp_path, family, overrides):
    model, tok = tiny_model(family, vocab_size=VOCAB, **overrides), merged_tokenizer()
    write_gguf(model, tok, tmp_path / "m.gguf", dtype="f32")
    # transformers' GGUF loader reads head_dim from rope.dimension_count for llama but not for qwen2,
    # so qwen2 gets the config handed in; the weights (and llama's q/k un-permutation) still come from GGUF.
    extra = {} if family == "llama" else {"config": model.config}
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", **extra).eval()
    ids = tok(TEXT)["input_ids"]
    np.testing.assert_allclose(hf_logits(loaded, ids), hf_logits(model, ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("family,overrides", VARIANTS, ids=IDS)
def test_llama_cpp_logits_and_tokens_match_transformers(tmp_path, family, overrides):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    model, tok = tiny_model(family, vocab_size=VOCAB, **overrides), merged_tokenizer()
    path = write_gguf(model, tok, tmp_path / "m.gguf", dtype="f32")
    llm = llama_cpp.Llama(str(path), logits_all=True, n_ctx=64, verbose=False)
    ids = tok(TEXT)["input_ids"]
    assert llm.tokenize(TEXT.encode(), add_bos=False) == ids
    llm.eval(ids)
    cpp = np.asarray(llm.scores[: len(ids)])
    ref = hf_logits(model, ids)
    np.testing.assert_allclose(cpp, ref, atol=2e-3 * np.abs(ref).max(), rtol=0)


def test_f16_is_about_half_the_size_of_f32(tmp_path):
    model, tok = tiny_model("llama", vocab_size=VOCAB), merged_tokenizer()
    f32 = write_gguf(model, tok, tmp_path / "a.gguf", dtype="f32").stat().st_size
    f16 = write_gguf(model, tok, tmp_path / "b.gguf", dtype="f16").stat().st_size
    assert 0.45 < f16 / f32 < 0.6


def test_mistral_is_written_as_llama(tmp_path):
    torch.manual_seed(0)  # same tiny shape as tiny_config, as a MistralForCausalLM
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings")
    llama_cfg = tiny_config("llama", vocab_size=VOCAB)
    model = MistralForCausalLM(MistralConfig(**{k: getattr(llama_cfg, k) for k in keys}, sliding_window=None)).eval()
    assert model.config.model_type == "mistral"
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    tok = merged_tokenizer()
    path = write_gguf(model, tok, tmp_path / "m.gguf", dtype="f32")
    assert field(gguf.GGUFReader(path), "general.architecture") == "llama"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf").eval()
    ids = tok(TEXT)["input_ids"]
    np.testing.assert_allclose(hf_logits(loaded, ids), hf_logits(model, ids), atol=1e-4, rtol=0)


@pytest.mark.slow  # reads the default model's GGUF file (its tokenizer only): ~10 s of gguf-py parsing
def test_tokenizer_from_source_gguf_or_hf_object_tokenizes_like_the_source(tmp_path):
    source = smollm2_path()
    model = tiny_model("llama", vocab_size=49152, tie_word_embeddings=True)
    copied = write_gguf(model, None, tmp_path / "copied.gguf", tokenizer_gguf=source)
    src, out = gguf.GGUFReader(source), gguf.GGUFReader(copied)
    keys = sorted(k for k in src.fields if k.startswith("tokenizer."))
    assert sorted(k for k in out.fields if k.startswith("tokenizer.")) == keys
    for key in keys:
        assert field(out, key) == field(src, key), key
    # The HF tokenizer that transformers builds from the same file, written back, tokenizes the same.
    hf_tok = AutoTokenizer.from_pretrained(os.path.dirname(source), gguf_file=os.path.basename(source))
    rebuilt = write_gguf(model, hf_tok, tmp_path / "rebuilt.gguf")
    llama_cpp = pytest.importorskip("llama_cpp")
    text = "<|im_start|>user\nHello world, in 2024 we ran 12345 tests! Ünïcödé 😀<|im_end|>\n"
    toks = [llama_cpp.Llama(str(p), vocab_only=True, verbose=False).tokenize(text.encode(), add_bos=False,
                                                                            special=True)
            for p in (source, copied, rebuilt)]
    assert toks[0] == toks[1] == toks[2] == hf_tok(text)["input_ids"]


def test_errors_and_atomic_write(tmp_path, monkeypatch):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="dtype"):
        write_gguf(model, tiny_tokenizer(), tmp_path / "x.gguf", dtype="q4")
    with pytest.raises(ValueError, match="tokenizer"):
        write_gguf(model, None, tmp_path / "x.gguf")
    with pytest.raises(ValueError, match="merges"):  # llama.cpp would refuse to load it
        write_gguf(model, tiny_tokenizer(), tmp_path / "x.gguf")

    def boom(self, *a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_gguf(tiny_model("llama", vocab_size=VOCAB), merged_tokenizer(), tmp_path / "y.gguf")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_real_smollm2_f16_export_runs_in_llama_cpp(tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    source = smollm2_path()
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(source), gguf_file=os.path.basename(source),
                                                 dtype=torch.float32).eval()
    path = write_gguf(model, None, tmp_path / "smollm2-f16.gguf", dtype="f16", tokenizer_gguf=source)
    llm = llama_cpp.Llama(str(path), logits_all=True, n_ctx=128, verbose=False)
    ids = llm.tokenize(b"The capital of France is", add_bos=False)
    llm.eval(ids)
    cpp, ref = np.asarray(llm.scores[: len(ids)]), hf_logits(model, ids)
    # f16 weights against fp32 transformers: measured max error ~0.2% of the largest logit.
    assert (cpp.argmax(-1) == ref.argmax(-1)).all()
    assert np.abs(cpp - ref).max() < 0.01 * np.abs(ref).max()
    llm.reset()
    text = llm("The capital of France is", max_tokens=8, temperature=0.0)["choices"][0]["text"]
    assert "Paris" in text
