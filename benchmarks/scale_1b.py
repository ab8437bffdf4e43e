"""A 1B-class model end to end through the real commands on this machine: select, finetune, profile, search, export.

The model has Llama-3.2-1B's shape (16 layers, hidden 2048, 32 query / 8 KV heads, FFN 8192, vocab 128256,
tied embeddings: 1.24B parameters), random weights built in code and saved in bf16 as the real checkpoint is.
Every step is the installed command in its own process, at ``--dtype`` (default auto: this machine's rule), with
small settings that fit a 2-core CPU; the point is that nothing is tied to the 135M model's sizes and what a
1B model costs in wall time and peak memory (each process's own maximum resident set, from ``wait4``).
llama.cpp is profiled where llama-cpp-python is installed. Results: ``results/scale-1b.json``.

    python benchmarks/scale_1b.py             # ~20 min on 2 CPU cores
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from amoeba_search.compute import resolve_compute  # noqa: E402
from amoeba_search.paths import atomic_write_text  # noqa: E402
from amoeba_search.profiling.machine import detect_machine  # noqa: E402

LLAMA_3_2_1B = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                    head_dim=64, intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True,
                    max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=500000.0,
                    bos_token_id=1, eos_token_id=2, pad_token_id=0)
BIN = Path(sys.executable).parent


def byte_tokenizer():
    """A byte-level BPE tokenizer (single bytes and two merges, which llama.cpp needs): real text in, ids far
    below the model's vocab."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<unk>", "<s>", "</s>"])}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    for merged in ("Ġt", "he"):
        vocab[merged] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "t"), ("h", "e")], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<unk>")


def build_model(path: Path) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**LLAMA_3_2_1B))
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    model.tie_weights()  # to_empty gives the head its own storage: tie it to the embedding again, as the real model is
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                param.normal_(0, 0.02)
            else:
                param.fill_(1.0)  # RMSNorm weights
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return {"parameters": sum(p.numel() for p in model.parameters()), "saved_dtype": "bfloat16"}


def run(name: str, argv: list[str], results: dict, out: Path) -> dict:
    """Run one command, record wall time, its own peak RSS and its JSON output (or its error)."""
    print(f"[{name}] {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        proc = subprocess.Popen(argv, stdout=out_file, stderr=err_file, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (Popen.wait would discard it)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out_file.seek(0), err_file.seek(0)
        stdout, stderr = out_file.read(), err_file.read()
    seconds = time.perf_counter() - start
    record = {"command": [Path(argv[0]).name, *argv[1:]], "wall_s": round(seconds, 1), "exit": proc.returncode,
              "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2)}
    try:
        record["output"] = json.loads(stdout)
    except json.JSONDecodeError:
        record["stdout_tail"] = stdout[-2000:]
    if proc.returncode != 0:
        record["stderr_tail"] = stderr[-2000:]
    results["steps"][name] = record
    atomic_write_text(out, json.dumps(results, indent=1, default=str) + "\n")
    print(f"[{name}] exit {proc.returncode} in {seconds:.0f} s", flush=True)
    return record


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale-1b.json")
    p.add_argument("--dtype", default="auto", help="compute dtype of every command (default: this machine's rule)")
    p.add_argument("--work", type=Path, help="working directory (default: a temporary one, removed at the end)")
    p.add_argument("--smoke", action="store_true", help="the same steps on a small model of the same depth (to check "
                                                        "the script; needs --out)")
    args = p.parse_args()
    if args.smoke:
        if args.out == p.get_default("out"):
            p.error("--smoke writes no committed result: give --out")
        LLAMA_3_2_1B.update(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                            intermediate_size=256, vocab_size=512)
    work = args.work or Path(tempfile.mkdtemp(prefix="scale-1b-"))
    compute = resolve_compute("auto", args.dtype)
    machine = detect_machine()
    results = {"machine": {"cpu_model": machine.cpu_model, "cpu_cores": machine.cpu_cores,
                           "memory_gib": round((machine.memory_bytes or 0) / 2**30, 1), "torch": torch.__version__},
               "compute": compute.to_dict(), "config": LLAMA_3_2_1B, "steps": {}}
    model = work / "llama-1b-random"
    start = time.perf_counter()
    results["model"] = {**build_model(model), "build_s": round(time.perf_counter() - start, 1)}
    dtype = ["--dtype", compute.dtype_name]
    strategy, ft, table = work / "strategy.json", work / "ft", work / "torch.csv"
    try:
        run("select", [str(BIN / "amoeba-select"), "--model", str(model), "--calib", "wiki", "--samples", "1",
                       "--seq-len", "64", "--min-depth", "12", "--batch-size", "1", "--bias-compensation",
                       "--out", str(strategy), "--json", *dtype], results, args.out)
        run("finetune", [str(BIN / "amoeba-finetune"), "--model", str(model), "--strategy", str(strategy),
                         "--data", "wiki", "--steps", "3", "--batch-size", "1", "--seq-len", "64",
                         "--random-shapes", "1", "--checkpoint-every", "3", "--out", str(ft), "--json", *dtype],
            results, args.out)
        # the corners of the search space (depths 12..16, FFN 0.5..1, heads 1/4..1): the table's range
        shapes = ",".join(f"d{d}-f{f}-h{h}" for d in (12, 16) for f in (0.5, 1) for h in (0.25, 1))
        run("profile-torch", [str(BIN / "amoeba-profile"), "--device", "cpu", "--flow", "torch", "--model",
                              str(model), "--shapes", shapes, "--holdout", "0", "--prompt-len", "32",
                              "--context-len", "40", "--repeats", "3", "--max-rounds", "1", "--out", str(table),
                              "--json"], results, args.out)
        if importlib.util.find_spec("llama_cpp") is not None:
            run("profile-llamacpp", [str(BIN / "amoeba-profile"), "--device", "cpu", "--flow", "llamacpp",
                                     "--model", str(model), "--shapes", shapes, "--holdout", "0", "--prompt-len",
                                     "32", "--context-len", "40", "--repeats", "3", "--max-rounds", "1",
                                     "--out", str(work / "llamacpp.csv"), "--json"], results, args.out)
        else:
            results["steps"]["profile-llamacpp"] = {"skipped": "llama-cpp-python is not installed"}
        search = run("search", [str(BIN / "amoeba-search"), "--model", str(model), "--strategy", str(strategy),
                                "--adapter", str(ft), "--table", str(table), "--budget-ms", "1e9", "--blocks", "1",
                                "--seq-len", "64", "--trials", "24", "--no-verify", "--out", str(work / "search"),
                                "--json", *dtype], results, args.out)
        best = (search.get("output") or {}).get("best") or "d12-f0.5-h0.5"
        run("export", [str(BIN / "amoeba-export"), "--model", str(model), "--strategy", str(strategy), "--adapter",
                       str(ft), "--shape", best, "--dtype", "bf16", "--gguf", "q8_0", "--out", str(work / "export"),
                       "--json"], results, args.out)
    finally:
        results["total_wall_s"] = round(time.perf_counter() - start, 1)
        # the working directory is this run's own: name it $WORK in the committed record
        atomic_write_text(args.out, json.dumps(results, indent=1, default=str).replace(str(work), "$WORK") + "\n")
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    failed = [k for k, v in results["steps"].items() if v.get("exit") not in (0, None)]
    print(f"done in {results['total_wall_s']:.0f} s; failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
