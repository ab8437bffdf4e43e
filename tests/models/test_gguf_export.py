"""GGUF export: readable by gguf-py, loaded back by transformers and llama.cpp with the same logits."""
from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile

import gguf
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (AutoModelForCausalLM, AutoTokenizer, MistralConfig, MistralForCausalLM,
                          PreTrainedTokenizerFast)

from amoeba_search.errors import MissingDependency
from amoeba_search.models import gguf_quantize
from amoeba_search.models.gguf_export import GGUF_TYPES, write_gguf
from amoeba_search.models.gguf_quantize import llamacpp_quant_types, quantize_with_llamacpp
from amoeba_search.profiling.machine import isa_flags
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


# Rows of 64: a multiple of Q8_0's block of 32, so every weight matrix is quantized (none falls back to f16).
Q8_SHAPE = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}
QTYPE = {"bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
FILE_TYPE = {"bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}


def q8_0_bound(w: np.ndarray) -> np.ndarray:
    """Largest error Q8_0 may make on each value of ``w`` (rows a multiple of 32), from the format alone.

    A block of 32 is stored as int8 q = round(x / d) with d = max|x| / 127, and d kept as f16. So
    |x - q * f16(d)| <= d / 2 (rounding) + 127 * |d - f16(d)|, where f16 rounding is off by at most
    d * 2**-11 (normal range) or 2**-25 (subnormal); 1e-4 * d covers the f32 arithmetic on the way.
    """
    blocks = np.abs(w.reshape(-1, 32))
    d = blocks.max(axis=1, keepdims=True) / 127
    return np.broadcast_to(d * (0.5 + 127 * 2**-11 + 1e-4) + 127 * 2**-25, blocks.shape).reshape(w.shape)


def assert_stored_like(dtype: str, got: np.ndarray, want: np.ndarray) -> None:
    """``got`` (as read back) is ``want`` (fp32) stored as ``dtype``: bf16 exactly, q8_0 within its bound."""
    if dtype == "bf16":  # gguf-py rounds to nearest even, as torch does
        np.testing.assert_array_equal(got, torch.tensor(want).to(torch.bfloat16).float().numpy())
    else:
        assert (np.abs(got - want) <= q8_0_bound(want)).all()


def test_gguf_types_are_the_public_tuple():
    assert GGUF_TYPES == ("f32", "f16", "bf16", "q8_0")


@pytest.mark.parametrize("dtype", ["bf16", "q8_0"])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_bf16_and_q8_0_tensor_types_and_stored_values(tmp_path, family, dtype):
    model = tiny_model(family, vocab_size=VOCAB, **Q8_SHAPE)
    r = gguf.GGUFReader(write_gguf(model, merged_tokenizer(), tmp_path / "m.gguf", dtype=dtype))
    assert field(r, "general.file_type") == FILE_TYPE[dtype]
    tensors = {t.name: t for t in r.tensors}
    for name, t in tensors.items():  # weight matrices take the type; norms and (qwen2's) biases stay f32
        want = QTYPE[dtype] if name.endswith(".weight") and len(t.shape) == 2 else gguf.GGMLQuantizationType.F32
        assert t.tensor_type == want, name
    if family == "qwen2":
        assert tensors["blk.0.attn_q.bias"].tensor_type == gguf.GGMLQuantizationType.F32
    # ffn_down and the embeddings are not permuted: compare them as stored (rows = HF rows).
    for i, layer in enumerate(model.model.layers):
        t = tensors[f"blk.{i}.ffn_down.weight"]
        assert_stored_like(dtype, gguf.quants.dequantize(t.data, t.tensor_type), layer.mlp.down_proj.weight.detach().numpy())
    t = tensors["token_embd.weight"]
    assert_stored_like(dtype, gguf.quants.dequantize(t.data, t.tensor_type), model.model.embed_tokens.weight.detach().numpy())
    t = tensors["blk.0.attn_norm.weight"]
    np.testing.assert_array_equal(t.data, model.model.layers[0].input_layernorm.weight.detach().numpy())


def test_q8_0_falls_back_to_f16_when_rows_are_not_a_multiple_of_32(tmp_path):
    model = tiny_model("llama", vocab_size=VOCAB)  # hidden 48: only ffn_down has rows of 64
    r = gguf.GGUFReader(write_gguf(model, merged_tokenizer(), tmp_path / "m.gguf", dtype="q8_0"))
    types = {t.name: t.tensor_type for t in r.tensors}
    assert field(r, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.Q8_0
    for name in ("blk.0.attn_q.weight", "blk.0.ffn_up.weight", "token_embd.weight", "output.weight"):
        assert types[name] == gguf.GGMLQuantizationType.F16, name
    assert types["blk.0.ffn_norm.weight"] == gguf.GGMLQuantizationType.F32


@pytest.mark.parametrize("dtype", ["bf16", "q8_0"])
def test_bf16_and_q8_0_load_back_in_transformers(tmp_path, dtype):
    # transformers' GGUF loader dequantizes every tensor with gguf-py (any type it knows, Q8_0 and BF16 too)
    # and undoes the q/k permutation, so every weight can be compared with the original's.
    model, tok = tiny_model("llama", vocab_size=VOCAB, **Q8_SHAPE), merged_tokenizer()
    write_gguf(model, tok, tmp_path / "m.gguf", dtype=dtype)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf").eval()
    want = dict(model.named_parameters())
    for name, p in loaded.named_parameters():
        got, ref = p.detach().numpy(), want[name].detach().numpy()
        if p.dim() == 2:
            assert_stored_like(dtype, got, ref)
        else:
            np.testing.assert_array_equal(got, ref, err_msg=name)
    # The logits are those of the original with its weights rounded as the file stores them, up to fp32
    # arithmetic (the tolerance of the f32 round trip above).
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for p in rounded.parameters():
            if p.dim() == 2:
                w = p.detach().numpy()
                q = gguf.quants.dequantize(gguf.quants.quantize(w, QTYPE[dtype]), QTYPE[dtype])
                p.copy_(torch.from_numpy(q.reshape(w.shape)))
    ids = tok(TEXT)["input_ids"]
    np.testing.assert_allclose(hf_logits(loaded, ids), hf_logits(rounded, ids), atol=1e-4, rtol=0)


def test_general_name_is_the_given_name_never_a_temporary_folder(tmp_path):
    model, tok = tiny_model("llama", vocab_size=VOCAB), merged_tokenizer()

    def name_in_file(**kwargs) -> str:
        return field(gguf.GGUFReader(write_gguf(model, tok, tmp_path / "n.gguf", dtype="f32", **kwargs)),
                     "general.name")

    assert name_in_file(name="smollm2-135m d20-f0.75-h0.667") == "smollm2-135m d20-f0.75-h0.667"
    assert name_in_file() == "model"  # built in code: no name_or_path
    for source, want in [("/models/SmolLM2-135M-Instruct/", "SmolLM2-135M-Instruct"),
                         (str(tmp_path / "tmpk3j_x9q"), "model"), ("/home/u/.cache/subnet", "subnet"),
                         ("/data/.export-1234", "model")]:
        model.config._name_or_path = source
        assert name_in_file() == want, source
    # A subnet saved to a temporary folder and loaded back from it, as models/export.py does.
    with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
        model.save_pretrained(tmp)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp)
    assert os.path.basename(reloaded.config.name_or_path).startswith("tmp")
    r = gguf.GGUFReader(write_gguf(reloaded, tok, tmp_path / "r.gguf", dtype="f32"))
    assert field(r, "general.name") == "model"


def test_llamacpp_quant_types_and_unknown_type(tmp_path):
    names = llamacpp_quant_types()
    assert {"Q4_K_M", "Q5_K_S", "Q6_K", "Q8_0", "IQ4_XS", "F16", "BF16", "F32"} <= set(names)
    assert "GUESSED" not in names
    with pytest.raises(ValueError, match=r"did you mean 'Q4_K_M'.*known: .*Q5_K_M"):
        quantize_with_llamacpp(tmp_path / "a.gguf", tmp_path / "b.gguf", "Q4_KM")


def without_llama_cpp(monkeypatch) -> None:
    """Neither llama-quantize on PATH nor an importable llama_cpp, whatever this machine has."""
    monkeypatch.setattr(gguf_quantize.shutil, "which", lambda name, *a, **k: None)
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` raise ImportError


def test_quantize_without_llama_cpp_raises_missing_dependency(tmp_path, monkeypatch):
    src = write_gguf(tiny_model("llama", vocab_size=VOCAB), merged_tokenizer(), tmp_path / "m.gguf", dtype="f32")
    without_llama_cpp(monkeypatch)
    with pytest.raises(MissingDependency, match="pip install llama-cpp-python"):
        quantize_with_llamacpp(src, tmp_path / "q.gguf", "Q4_K_M")
    assert list(tmp_path.iterdir()) == [src]
    with pytest.raises(FileNotFoundError):
        quantize_with_llamacpp(tmp_path / "absent.gguf", tmp_path / "q.gguf", "Q4_K_M")


def fake_llama_quantize(folder, body: str) -> None:
    """An executable named llama-quantize, called as `llama-quantize SRC DST TYPE`, that runs ``body``."""
    folder.mkdir()
    exe = folder / "llama-quantize"
    exe.write_text("#!/bin/sh\n" + body)
    exe.chmod(0o755)


def test_quantize_runs_llama_quantize_on_path_and_renames_only_on_success(tmp_path, monkeypatch):
    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF")
    fake_llama_quantize(tmp_path / "bin", 'printf "%s %s" "$(basename "$1")" "$3" > "$2"\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    out = quantize_with_llamacpp(src, tmp_path / "q.gguf", "q4_k_m")
    assert out == tmp_path / "q.gguf" and out.read_text() == "m.gguf Q4_K_M"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "m.gguf", "q.gguf"]

    shutil.rmtree(tmp_path / "bin")
    fake_llama_quantize(tmp_path / "bin", 'echo partial > "$2"\necho "main: failed to quantize: boom" >&2\nexit 1\n')
    with pytest.raises(RuntimeError, match="exit 1.*boom"):
        quantize_with_llamacpp(src, tmp_path / "r.gguf", "Q5_K_M")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "m.gguf", "q.gguf"]


def test_q4_k_m_through_llama_cpp_loads_and_runs(tmp_path, monkeypatch):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    monkeypatch.setattr(gguf_quantize.shutil, "which", lambda name, *a, **k: None)  # use llama_cpp itself
    # Rows of 256 (k-quants' super-block), so llama.cpp does not fall back to Q5_0 for them.
    model = tiny_model("llama", vocab_size=VOCAB, hidden_size=256, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=64)
    tok = merged_tokenizer()
    src = write_gguf(model, tok, tmp_path / "m-f32.gguf", dtype="f32")
    dst = quantize_with_llamacpp(src, tmp_path / "m-q4_k_m.gguf", "Q4_K_M")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-f32.gguf", "m-q4_k_m.gguf"]
    r = gguf.GGUFReader(dst)
    assert field(r, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q4_K_M
    tensors = {t.name: t for t in r.tensors}
    assert tensors["blk.0.ffn_up.weight"].tensor_type == gguf.GGMLQuantizationType.Q4_K
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    # 4 bits: 16 levels over each block's range, a rounding error of about range / 15 / sqrt(12), i.e. some
    # 8% of the weights' RMS for Gaussian weights; 25% leaves room for llama.cpp's clipping and scale rounding.
    t = tensors["blk.0.ffn_down.weight"]
    w = model.model.layers[0].mlp.down_proj.weight.detach().numpy()
    err = gguf.quants.dequantize(t.data, t.tensor_type) - w
    assert np.sqrt((err**2).mean()) < 0.25 * np.sqrt((w**2).mean())

    if "amx_int8" in isa_flags():
        # llama-cpp-python 0.3.36 crashes (SIGSEGV) decoding any Q4_K_M file with its AMX / repacked weight
        # buffers on an AMX CPU; without them it runs the same file. The file is what this test checks.
        defaults = llama_cpp.llama_cpp.llama_model_default_params

        def no_extra_buffers():
            params = defaults()
            params.use_extra_bufts = False
            return params

        monkeypatch.setattr(llama_cpp.llama_cpp, "llama_model_default_params", no_extra_buffers)
    llm = llama_cpp.Llama(str(dst), logits_all=True, n_ctx=64, verbose=False)
    ids = tok(TEXT)["input_ids"]
    assert llm.tokenize(TEXT.encode(), add_bos=False) == ids
    llm.eval(ids)
    scores = np.asarray(llm.scores[: len(ids)])
    assert scores.shape == (len(ids), VOCAB) and np.isfinite(scores).all()
