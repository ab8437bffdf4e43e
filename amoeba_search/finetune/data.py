"""Training examples: plain text as language modelling, or Alpaca-style instructions scored on the response."""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from amoeba_search.data.files import jsonl_records
from amoeba_search.errors import InputError
from amoeba_search.finetune.losses import IGNORE

PROMPT = ("Below is an instruction that describes a task{with_input}. Write a response that appropriately "
          "completes the request.\n\n### Instruction:\n{instruction}\n\n{input_block}### Response:\n")


@dataclass
class TrainingData:
    input_ids: torch.Tensor   # (n, T) int64
    labels: torch.Tensor      # (n, T) int64, IGNORE where not scored
    description: dict

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, step: int, batch_size: int, *, seed: int, rank: int = 0, world: int = 1):
        """The examples of ``rank`` at ``step`` (1-based): a seeded shuffle per epoch, a pure function of step."""
        first = (step - 1) * batch_size * world + rank * batch_size
        index = [_permutation(len(self), seed, p // len(self))[p % len(self)] for p in range(first, first + batch_size)]
        return self.input_ids[index], self.labels[index]


@lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def is_instruction_file(source) -> bool:
    """A ``.jsonl`` whose first record has ``instruction`` and ``output`` fields."""
    if not isinstance(source, (str, os.PathLike)) or not str(source).endswith(".jsonl") or not Path(source).is_file():
        return False
    try:
        for _, record in jsonl_records(source):
            return isinstance(record, dict) and "instruction" in record and "output" in record
    except ValueError:  # not JSON: let the text reader report it
        return False
    return False


def text_data(source, tokenizer, *, seq_len: int, max_blocks: int | None = None, split: str = "train") -> TrainingData:
    from amoeba_search.data import token_blocks
    from amoeba_search.data.sources import source_name

    blocks = token_blocks(source, tokenizer, split=split, seq_len=seq_len, max_blocks=max_blocks)
    return TrainingData(blocks, blocks.clone(), {"kind": "text", "source": source_name(source), "split": split,
                                                 "seq_len": seq_len, "examples": len(blocks)})


def instruction_data(path, tokenizer, *, seq_len: int, max_examples: int | None = None) -> TrainingData:
    """Alpaca JSONL (``instruction``, optional ``input``, ``output``); the loss is on the response only."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rows_ids, rows_labels, truncated = [], [], 0
    for lineno, record in jsonl_records(path):
        if not isinstance(record, dict) or not isinstance(record.get("instruction"), str) \
                or not isinstance(record.get("output"), str):
            raise InputError(f"{path}:{lineno}: expected an object with string 'instruction' and 'output' fields")
        extra = record.get("input") or ""
        prompt = PROMPT.format(with_input=", paired with an input that provides further context" if extra else "",
                               instruction=record["instruction"],
                               input_block=f"### Input:\n{extra}\n\n" if extra else "")
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(record["output"], add_special_tokens=False)["input_ids"] + [eos]
        ids = (prompt_ids + answer_ids)[:seq_len]
        labels = ([IGNORE] * len(prompt_ids) + answer_ids)[:seq_len]
        if len(prompt_ids) >= seq_len - 1:
            truncated += 1
            continue  # nothing of the response would be scored
        pad_len = seq_len - len(ids)
        rows_ids.append(ids + [pad] * pad_len)
        rows_labels.append(labels + [IGNORE] * pad_len)
        if max_examples is not None and len(rows_ids) >= max_examples:
            break
    if not rows_ids:
        raise InputError(f"{path}: no usable instruction examples (prompts longer than --seq-len {seq_len}: "
                         f"{truncated}); raise --seq-len")
    return TrainingData(torch.tensor(rows_ids), torch.tensor(rows_labels),
                        {"kind": "instruction", "source": str(path), "seq_len": seq_len, "examples": len(rows_ids),
                         "skipped_long_prompts": truncated})


def load_training_data(source, tokenizer, *, seq_len: int, max_examples: int | None = None,
                       split: str = "train") -> TrainingData:
    if is_instruction_file(source):
        return instruction_data(source, tokenizer, seq_len=seq_len, max_examples=max_examples)
    return text_data(source, tokenizer, seq_len=seq_len, max_blocks=max_examples, split=split)
