"""One-for-all fine-tuning: sandwich-sampled subnets, SMoL adapter, in-place distillation, balancing.

A run lives in one directory:
    run.json                      what was asked (model, strategy, data, adapter and training settings)
    log.csv                       one row per step: losses per subnet role, lr, grad norm, throughput
    checkpoints/step-0000050/     adapter.safetensors + adapter.json, optimizer.safetensors, trainer_state.json
    adapter/                      the final adapter (what amoeba-export / amoeba-search --adapter read)
Every step is a pure function of (seed, step) for data order, shapes and gate noise, so resuming from a
checkpoint continues the same run. Under ``torchrun`` each process takes its own slice of every batch and
gradients are averaged with ``torch.distributed`` (gloo on CPU, NCCL on GPU).
"""
from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from amoeba_search.distributed import barrier, rank_world
from amoeba_search.errors import AmoebaError, InputError
from amoeba_search.finetune.data import TrainingData
from amoeba_search.finetune.losses import balance, distill_loss, lm_loss, teacher_targets
from amoeba_search.finetune.sampling import sandwich
from amoeba_search.finetune.smol import SMoLAdapter
from amoeba_search.paths import atomic_dir, atomic_file, atomic_write_text
from amoeba_search.shapes import SearchSpace

logger = logging.getLogger(__name__)

LOG_FIELDS = ("step", "lr", "loss_largest", "loss_smallest", "loss_random", "loss_total", "grad_norm",
              "tokens", "tokens_per_s", "elapsed_s", "shapes")
# Settings that may change when a run is resumed; any other difference is refused.
RESUMABLE_CHANGES = {"steps", "checkpoint_every", "keep_checkpoints"}


class TrainingDiverged(AmoebaError):
    """A loss or gradient became NaN or infinite; nothing of that step was applied or saved."""


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tuning settings. The defaults are those of the published adapter (README, "Results"); amoeba-finetune
    takes its flag defaults and help from here (``field(metadata={"help": ...})``, as PEFT's configs do)."""

    steps: int = field(default=200, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=4, metadata={"help": "sequences per process per step"})
    seq_len: int = field(default=128, metadata={"help": "tokens per training sequence (the data's block length)"})
    lr: float = field(default=5e-4, metadata={"help": "peak learning rate of the adapter (AdamW)"})
    warmup_steps: int = field(default=10, metadata={"help": "linear warm-up steps before the cosine decay"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "learning rate at the last step, as a share of lr"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient norm clip"})
    num_random: int = field(default=2, metadata={"help": "random shapes per step besides largest and smallest"})
    distill: bool = field(default=True, metadata={
        "help": "non-largest subnets learn from the largest subnet's distribution (in-place distillation)"})
    label_weight: float = field(default=0.0, metadata={"help": "label loss mixed into distilled subnets (0..1)"})
    temperature: float = field(default=1.0, metadata={"help": "distillation temperature"})
    balance: bool = field(default=True, metadata={"help": "loss-magnitude balancing across subnets"})
    seed: int = field(default=0, metadata={"help": "seed of data order, shapes, gate noise and adapter init"})
    checkpoint_every: int = field(default=50, metadata={"help": "steps between checkpoints"})
    keep_checkpoints: int = field(default=2, metadata={"help": "newest checkpoints kept"})

    def __post_init__(self):
        for name in ("steps", "batch_size", "seq_len", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or not 0 <= self.label_weight <= 1 or self.temperature <= 0:
            raise InputError("need lr > 0, 0 <= label_weight <= 1 and temperature > 0")

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to ``min_lr_ratio * lr`` at the last step."""
        if step <= self.warmup_steps:
            return self.lr * step / max(1, self.warmup_steps)
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class Trainer:
    """Fine-tune ``adapter`` on ``loaded``'s supernet over ``space`` with ``data``; files go to ``out_dir``."""

    def __init__(self, loaded, adapter: SMoLAdapter, data: TrainingData, config: TrainConfig, out_dir,
                 space: SearchSpace, *, run_info: dict | None = None):
        self.loaded, self.adapter, self.data, self.config = loaded, adapter, data, config
        self.supernet = loaded.supernet
        self.space, self.out = space, Path(out_dir)
        self.rank, self.world = rank_world()
        self.run_info = {"train": asdict(config), "adapter": adapter.describe(), "data": data.description,
                         "space": {k: v for k, v in space.to_dict().items() if k != "dims"},
                         "world_size": self.world, **(run_info or {})}
        self.supernet.model.requires_grad_(False)  # only the adapter learns
        weight = next(self.supernet.model.parameters())
        self.device = weight.device
        # 16-bit weights train under autocast; the adapter and the optimizer state stay in fp32
        self.autocast = weight.dtype if weight.dtype in (torch.bfloat16, torch.float16) else None
        self.run_info["dtype"] = str(weight.dtype).removeprefix("torch.")
        self.optimizer = torch.optim.AdamW(adapter.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.step = 0
        self.resumed_after_skipping: list[str] = []  # checkpoints a resume had to skip (unreadable, non-finite)
        self._tokens_done = 0

    # -- public --------------------------------------------------------------------------------------

    def run(self, *, resume: bool = False, on_step: Callable[[dict], None] | None = None) -> dict:
        """Train to ``config.steps``; return a summary. ``on_step`` sees every log row (rank 0 only)."""
        self._start(resume)
        self.adapter.attach().train()
        started = time.perf_counter()
        while self.step < self.config.steps:
            row = self._train_step(self.step + 1, started)
            self.step += 1
            if self.rank == 0:
                self._append_log(row)
                if on_step is not None:
                    on_step(row)
            if self.step % self.config.checkpoint_every == 0 or self.step == self.config.steps:
                self.save_checkpoint()
        if self.rank == 0:
            self.adapter.save(self.out / "adapter", extra={"run": str(self.out), "step": self.step})
        barrier()
        self.adapter.eval()
        return {"out": str(self.out), "steps": self.step, "adapter": str(self.out / "adapter"),
                "checkpoint": str(self.latest_checkpoint())}

    def latest_checkpoint(self) -> Path | None:
        found = sorted((self.out / "checkpoints").glob("step-*"))
        return found[-1] if found else None

    # -- one step ------------------------------------------------------------------------------------

    def _train_step(self, step: int, started: float) -> dict:
        cfg = self.config
        lr = cfg.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        ids, labels = self.data.batch(step, cfg.batch_size, seed=cfg.seed, rank=self.rank, world=self.world)
        ids, labels = ids.to(self.device), labels.to(self.device)
        shapes = sandwich(self.space, cfg.num_random, seed=cfg.seed, step=step)
        self.adapter.noise_generator.manual_seed(cfg.seed * 1_000_003 + step)
        teacher, reference, raw = None, None, []
        for i, shape in enumerate(shapes):
            self.loaded.activate(shape)
            with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                logits = self.supernet(input_ids=ids, use_cache=False).logits  # (B, T, V); losses in fp32
            if i == 0:
                loss = lm_loss(logits, labels)
                reference = loss.detach()
                teacher = teacher_targets(logits, labels, temperature=cfg.temperature) if cfg.distill else None
            else:
                loss = lm_loss(logits, labels) if teacher is None else distill_loss(
                    logits, None, labels, temperature=cfg.temperature, targets=teacher)
                if teacher is not None and cfg.label_weight > 0:
                    loss = (1 - cfg.label_weight) * loss + cfg.label_weight * lm_loss(logits, labels)
            raw.append(loss.detach())
            scaled = balance(loss, reference) if cfg.balance and i > 0 else loss
            if torch.isfinite(loss.detach()):
                (scaled / len(shapes)).backward()
            del logits, loss, scaled
        losses = torch.stack(raw).float()  # on the device: NCCL reduces no CPU tensors
        grads = [p for p in self.adapter.parameters() if p.requires_grad]
        if self.world > 1:
            dist.all_reduce(losses)
            losses /= self.world
            for p in grads:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad /= self.world
        losses = losses.cpu()
        grad_norm = torch.nn.utils.clip_grad_norm_(grads, cfg.grad_clip if cfg.grad_clip > 0 else float("inf")).cpu()
        if not torch.isfinite(losses).all() or not torch.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            last = self.latest_checkpoint()
            kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
            bad = ", ".join(f"{s}={v:.4g}" for s, v in zip(shapes, losses.tolist()))
            raise TrainingDiverged(f"loss became non-finite at step {step} ({bad}); {kept}; "
                                   "lower --lr or raise --warmup-steps and resume")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        tokens = int(ids.numel()) * len(shapes) * self.world
        elapsed = time.perf_counter() - started
        self._tokens_done += tokens
        random_losses = losses[2:] if len(shapes) > 2 else losses[:0]
        return {"step": step, "lr": lr, "loss_largest": float(losses[0]),
                "loss_smallest": float(losses[1]) if len(shapes) > 1 else float("nan"),
                "loss_random": float(random_losses.mean()) if len(random_losses) else float("nan"),
                "loss_total": float(losses.mean()), "grad_norm": float(grad_norm), "tokens": tokens,
                "tokens_per_s": self._tokens_done / max(elapsed, 1e-9), "elapsed_s": round(elapsed, 3),
                "shapes": "|".join(map(str, shapes))}

    # -- files ---------------------------------------------------------------------------------------

    def _start(self, resume: bool) -> None:
        run_file = self.out / "run.json"
        last = self.latest_checkpoint()
        if last is not None and not resume:
            raise FileExistsError(f"{self.out} already holds a run (at {last.name}); pass --resume to continue it "
                                  "or choose another --out")
        if resume and run_file.is_file():
            from amoeba_search.jsonfile import read_json

            self._check_same_run(read_json(run_file, what="run file", fix="resume with the same --out or start "
                                                                         "another run"))
        if last is not None:
            self._resume_from_newest_good()
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_file, json.dumps(self.run_info, indent=2, default=str) + "\n")
            self._truncate_log(self.step)
        barrier()

    def _check_same_run(self, previous: dict) -> None:
        before, now = previous.get("train", {}), self.run_info["train"]
        changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and before.get(k, now[k]) != now[k])
        for key in ("adapter", "data", "space"):
            if previous.get(key) != json.loads(json.dumps(self.run_info[key], default=str)):
                changed.append(key)
        if changed:
            raise InputError(f"cannot resume {self.out}: these settings differ from the run there: "
                             f"{', '.join(changed)}; use the same settings or another --out")

    def save_checkpoint(self) -> Path | None:
        """Adapter, optimizer state, step and RNG state, written atomically (rank 0); keeps the newest few."""
        path = self.out / "checkpoints" / f"step-{self.step:07d}"
        if not self.adapter.is_finite():  # never save what cannot be resumed from or exported
            raise TrainingDiverged(f"the adapter's weights are not finite at step {self.step}; nothing was saved. "
                                   "Lower --lr and resume from the last checkpoint")
        if self.rank == 0:
            with atomic_dir(path, overwrite=True) as tmp:
                self.adapter.write_into(tmp, extra={"step": self.step})
                tensors, meta = _optimizer_tensors(self.optimizer)
                tensors["rng.torch"] = torch.get_rng_state()
                save_file(tensors, str(tmp / "optimizer.safetensors"))
                (tmp / "trainer_state.json").write_text(json.dumps(
                    {"step": self.step, "optimizer": meta, "train": asdict(self.config)}, indent=2))
            for old in sorted((self.out / "checkpoints").glob("step-*"))[:-self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        barrier()
        return path

    def _resume_from_newest_good(self) -> None:
        """Load the newest checkpoint that reads back whole and finite; a truncated or non-finite one (a crash
        mid-write on another file system, a diverged run saved by an older version) is skipped with a warning."""
        bad = []
        for path in sorted((self.out / "checkpoints").glob("step-*"), reverse=True):
            try:
                self.load_checkpoint(path)
            except Exception as err:  # noqa: BLE001 - any unreadable checkpoint: fall back to the one before
                bad.append(f"{path.name} ({type(err).__name__})")
                logger.warning("checkpoint %s is unreadable (%s); trying the one before", path, err)
                continue
            if not self.adapter.is_finite():
                bad.append(f"{path.name} (non-finite weights)")
                logger.warning("checkpoint %s holds non-finite adapter weights; trying the one before", path)
                continue
            self.resumed_after_skipping = bad
            logger.info("resuming %s from %s (step %d)", self.out, path.name, self.step)
            return
        raise TrainingDiverged(f"no usable checkpoint in {self.out / 'checkpoints'} (skipped: {', '.join(bad)}); "
                               "start a new run with another --out")

    def load_checkpoint(self, path: Path) -> None:
        state = json.loads((path / "trainer_state.json").read_text())
        self.adapter.load_state_dict(load_file(str(path / "adapter.safetensors")))
        tensors = load_file(str(path / "optimizer.safetensors"))
        torch.set_rng_state(tensors.pop("rng.torch"))
        self.optimizer.load_state_dict(_optimizer_state(tensors, state["optimizer"]))
        self.step = int(state["step"])

    def _append_log(self, row: dict) -> None:
        path = self.out / "log.csv"
        new = not path.is_file()
        with path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)

    def _truncate_log(self, step: int) -> None:
        """Drop log rows after ``step`` (written after the checkpoint a resumed run starts from)."""
        path = self.out / "log.csv"
        if not path.is_file():
            return
        rows = [r for r in _log_rows(path) if int(r["step"]) <= step]
        with atomic_file(path) as tmp, tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)


def read_log(out_dir) -> list[dict]:
    """The rows of a run's ``log.csv`` with numbers as floats (``step`` and ``tokens`` as ints)."""
    path = Path(out_dir) / "log.csv"
    out = []
    for lineno, row in enumerate(_log_rows(path), 2):
        try:
            out.append({k: (v if k == "shapes" else int(v) if k in ("step", "tokens") else float(v))
                        for k, v in row.items()})
        except (TypeError, ValueError):
            raise InputError(f"{path}:{lineno}: not a row of numbers; the log is damaged: fix or delete that "
                             "line") from None
    return out


def _log_rows(path: Path) -> list[dict]:
    """The rows of a ``log.csv`` as strings, checked to be a fine-tuning log with an integer step on every row."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            fields = reader.fieldnames or []
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text; the log is damaged: delete it or start another --out") from None
    except csv.Error as err:
        raise InputError(f"{path} is not a readable CSV ({err}); the log is damaged: delete it or start another "
                         "--out") from None
    if "step" not in fields:
        raise InputError(f"{path} is not an amoeba-finetune log (no 'step' column in its header); the log is "
                         "damaged: delete it or start another --out")
    for lineno, row in enumerate(rows, 2):
        try:
            int(row["step"])
        except (TypeError, ValueError):
            raise InputError(f"{path}:{lineno}: step {row['step']!r} is not a number; the log is damaged: fix "
                             "or delete that line") from None
    return rows


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state dict as safetensors tensors plus JSON metadata (no pickle)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value.detach().reshape(value.shape).contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars,
                     "shapes": {k: list(v.shape) for k, v in tensors.items()}}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value.reshape(meta["shapes"][name])
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}
