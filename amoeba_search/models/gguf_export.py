"""Write a plain (physically cut) LLaMA-style causal LM to a GGUF file that llama.cpp loads.

Follows llama.cpp's own ``convert_hf_to_gguf.py`` (classes ``LlamaModel`` and ``Qwen2Model``): the same
architecture names, metadata keys, tensor names (from gguf-py's tensor map), q/k permutation, and which
tensor gets which type (norms and biases f32, weight matrices the chosen type, Q8_0 falling back to f16).
The tokenizer is either rebuilt from a Hugging Face fast (byte-level BPE) tokenizer, as the converter's
``_set_vocab_gpt2`` does, or copied verbatim from a source GGUF file (``tokenizer_gguf=``).
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import gguf
import numpy as np
import torch

from amoeba_search.errors import InputError
from amoeba_search.paths import atomic_file

logger = logging.getLogger(__name__)

# model_type -> llama.cpp architecture. Mistral is written as "llama", as the converter does.
_ARCHS = {"llama": gguf.MODEL_ARCH.LLAMA, "mistral": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")  # what write_gguf writes itself; see gguf_quantize for the rest
_FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
               "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
_QUANT_TYPES = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
                "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}

# llama.cpp picks its pre-tokenizer (the regex splitting text before BPE) by name. The converter finds the
# name by hashing the tokens of a test string, which only works for published vocabularies; we recognise
# the pre-tokenizer's structure in tokenizer.json instead. Split regexes of the Qwen2 and Llama 3 tokenizers:
_SPLIT_REGEX_PRE = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen2",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "llama-bpe",
}


def write_gguf(model, tokenizer, path, *, dtype: str = "f16", tokenizer_gguf=None,
               tokenizer_pre: str | None = None, name: str | None = None) -> Path:
    """Write ``model`` (and its tokenizer) to the GGUF file ``path``; returns the path.

    Architecture "llama" for Llama and Mistral, "qwen2" for Qwen2 (a head-pruned Qwen2 is written as "llama").
    ``dtype``: one of ``GGUF_TYPES``, the type of the 2-D weight matrices; norms and biases are always f32.
    With "q8_0" a matrix whose rows are not a multiple of 32 long is written in f16, as the converter does.
    ``name``: ``general.name``; by default the basename of ``config.name_or_path`` unless that looks like a
    temporary folder (an exported subnet is saved and reloaded from one), else "model".
    ``tokenizer``: a Hugging Face fast byte-level BPE tokenizer; may be None when ``tokenizer_gguf`` is given.
    ``tokenizer_gguf``: a GGUF file whose ``tokenizer.*`` fields are copied as they are (most faithful for a
    model that was itself loaded from GGUF). ``tokenizer_pre``: llama.cpp pre-tokenizer name, when it
    cannot be recognised from the tokenizer. The file is written to a temporary name and renamed at the end.
    """
    if dtype not in GGUF_TYPES:
        raise InputError(f"dtype must be one of {GGUF_TYPES}, got {dtype!r}; for other llama.cpp types "
                         "write f16 or f32 and use amoeba_search.models.gguf_quantize.quantize_with_llamacpp")
    if tokenizer is None and tokenizer_gguf is None:
        raise InputError("pass a tokenizer, or tokenizer_gguf= (a GGUF file to copy the tokenizer from)")
    config = model.config
    model_type = getattr(config, "model_type", None)
    if model_type not in _ARCHS:
        raise InputError(f"model type {model_type!r} cannot be written to GGUF; supported: {sorted(_ARCHS)}")
    arch = _ARCHS[model_type]
    if arch == gguf.MODEL_ARCH.QWEN2 and config.num_attention_heads * _head_dim(config) != config.hidden_size:
        # llama.cpp's qwen2 graph sizes attn_q as (hidden, hidden), so it cannot hold a head-pruned model.
        # Its llama graph computes the same function (q/k/v biases are optional there) with any head count.
        arch = gguf.MODEL_ARCH.LLAMA
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[arch])
    _add_hparams(writer, config, dtype, name or _default_name(config))
    if tokenizer_gguf is not None:
        _copy_tokenizer(writer, tokenizer_gguf)
    else:
        _add_hf_tokenizer(writer, tokenizer, config.vocab_size, tokenizer_pre)
    for gguf_name, data, qtype in _tensors(model, arch, dtype):
        writer.add_tensor(gguf_name, data, raw_dtype=qtype)

    with atomic_file(path) as tmp:
        try:
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()  # before the rename: it flushes the file
    return path


def _default_name(config) -> str:
    base = Path(str(getattr(config, "name_or_path", "") or "")).name
    return "model" if not base or base.startswith((".", "tmp")) else base


def _head_dim(config) -> int:
    # Cut models keep head_dim but have fewer heads, so hidden_size // num_heads is wrong for them.
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _add_hparams(writer: gguf.GGUFWriter, config, dtype: str, name: str) -> None:
    head_dim = _head_dim(config)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)  # transformers' GGUF loader reads head_dim from this key
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(_FILE_TYPES[dtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    # transformers 5 keeps rope settings in config.rope_parameters; older configs use rope_theta/rope_scaling.
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope_type != "default":
        raise NotImplementedError(f"rope type {rope_type!r} is not supported by the GGUF export")


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF rotate-half q/k rows -> llama.cpp's interleaved rope layout (convert_hf_to_gguf.LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(model, arch: gguf.MODEL_ARCH, dtype: str):
    """Yield (gguf name, data, GGML type) for every weight, typed as llama.cpp's converter would write it.

    ``data`` is float32/float16 for F32/F16, else the packed bytes (uint8, one row of blocks per weight row).
    """
    config = model.config
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    tensor_map = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    tied = out_emb is not None and out_emb.weight.data_ptr() == in_emb.weight.data_ptr()
    for hf_name, t in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp falls back to token_embd when output.weight is absent
        gguf_name = tensor_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise InputError(f"no GGUF name for tensor {hf_name!r} of a {arch.name.lower()} model")
        t = t.detach().to("cpu", torch.float32)
        if arch == gguf.MODEL_ARCH.LLAMA:  # qwen2 keeps HF's layout; llama.cpp ropes it NEOX-style
            if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
                t = _permute(t, n_head)
            elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
                t = _permute(t, n_kv)
        yield (gguf_name, *_quantize(t.numpy(), gguf_name, dtype))


def _quantize(array: np.ndarray, gguf_name: str, dtype: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """The converter's rule: 1-D tensors, norms and biases stay f32 (llama.cpp's kernels for them need f32);
    other weights take ``dtype``, and fall back to f16 when gguf-py cannot quantize them (Q8_0 packs each row
    in blocks of 32 values, so a row length that is not a multiple of 32 raises QuantError)."""
    qtype = _QUANT_TYPES[dtype]
    if array.ndim <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        qtype = gguf.GGMLQuantizationType.F32
    try:
        return gguf.quants.quantize(array, qtype), qtype
    except gguf.QuantError as err:
        logger.info("%s: %s, falling back to F16", gguf_name, err)
        return gguf.quants.quantize(array, gguf.GGMLQuantizationType.F16), gguf.GGMLQuantizationType.F16


def _add_hf_tokenizer(writer: gguf.GGUFWriter, tokenizer, vocab_size: int, tokenizer_pre: str | None) -> None:
    """Byte-level BPE vocabulary, as convert_hf_to_gguf's get_vocab_base + _set_vocab_gpt2 write it."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        tok_json = json.loads((Path(tmp) / "tokenizer.json").read_text(encoding="utf-8"))
        if tok_json["model"]["type"] != "BPE" or tok_json["model"].get("byte_fallback"):
            raise InputError("only byte-level BPE tokenizers can be exported; pass tokenizer_gguf= instead")
        # SpecialVocab reads merges and bos/eos/unk/pad ids and the chat template from the saved files.
        special = gguf.SpecialVocab(tmp, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise InputError("llama.cpp needs BPE merges, and this tokenizer has none")

    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise InputError(f"tokenizer has ids >= the model's vocab size {vocab_size}")
    id_to_token = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in id_to_token:  # embedding rows beyond the tokenizer: padding, never produced
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(id_to_token[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(id_to_token[i])
            types.append(gguf.TokenType.NORMAL)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tokenizer_pre or _pre_tokenizer_name(tok_json.get("pre_tokenizer")))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # Whether bos/eos are prepended/appended: ask the tokenizer itself rather than parse its post-processor.
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    special.add_special_token["bos"] = tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id]
    special.add_special_token["eos"] = tokenizer.eos_token_id is not None and ids[-1:] == [tokenizer.eos_token_id]
    special.add_to_gguf(writer, quiet=True)


def _pre_tokenizer_name(pre: dict | None) -> str:
    """llama.cpp's name for a tokenizer.json pre_tokenizer, or ValueError when it is not one we know."""
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre] if pre else []
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # digits split one by one, then the GPT-2 regex (SmolLM's pre-tokenizer)
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        name = _SPLIT_REGEX_PRE.get(steps[0].get("pattern", {}).get("Regex"))
        if name:
            return name
    raise InputError(f"cannot tell llama.cpp's pre-tokenizer for {pre!r}; pass tokenizer_pre= "
                     "(e.g. 'gpt-2', 'llama-bpe', 'qwen2') or tokenizer_gguf=")


def _copy_tokenizer(writer: gguf.GGUFWriter, source) -> None:
    """Copy every ``tokenizer.*`` key of the GGUF file ``source`` unchanged."""
    reader = gguf.GGUFReader(source)
    if "tokenizer.ggml.tokens" not in reader.fields:
        raise InputError(f"{source} holds no tokenizer (tokenizer.ggml.tokens missing)")
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = gguf.GGUFValueType(field.types[0])
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = gguf.GGUFValueType(field.types[1])
            if sub == gguf.GGUFValueType.STRING:  # raw bytes: tokens need not be valid UTF-8 on their own
                value = [bytes(field.parts[i]) for i in field.data]
            else:
                value = [field.parts[i].tolist()[0] for i in field.data]
            writer.add_key_value(key, value, vtype, sub_type=sub)
        elif vtype == gguf.GGUFValueType.STRING:
            writer.add_key_value(key, bytes(field.parts[field.data[0]]), vtype)
        else:
            writer.add_key_value(key, field.parts[field.data[0]].tolist()[0], vtype)
