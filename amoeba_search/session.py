"""The composition root: for a model, what everything runs with unless told otherwise, and the pieces the
commands assemble from it. The commands parse flags, call these and print; a Python user calls the same
functions and gets the same result.

- the model: ``open_supernet`` (a model with a strategy and an adapter, as given) and ``open_session`` (with
  the model's defaults resolved and the device and dtype chosen)
- artefacts: the default strategy and adapter of the model (``resolve_artefacts``; committed files of the
  default model, nothing for any other)
- compute: the device and dtype (``resolve_compute``)
- seeding: ``seed_everything``
- fine-tuning: ``adapter_config`` (rank scaled to the model), ``new_adapter`` (gate centred on the routed
  shapes, as amoeba-finetune does) and ``finetune`` (the whole run)
- search: the latency table or estimate (``resolve_table``, ``latency_model``), the memory budget
  (``memory_budget``), where the accuracy predictor is read and a refit written (``predictor_path``: committed
  files are only read) and the study tag (``study_tag``)

>>> loaded = open_session("smollm2-135m").loaded            # default strategy and adapter, auto device/dtype
>>> loaded = open_supernet("smollm2-135m", "strategy.json", adapter="out/ft/adapter")  # exactly these files
>>> summary = finetune(loaded, load_training_data("wiki", loaded.tokenizer, seq_len=128), "out/ft")
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from amoeba_search.defaults import Artefacts, committed_dir, resolve_artefacts
from amoeba_search.errors import InputError
from amoeba_search.resources import is_committed

if TYPE_CHECKING:  # torch and the model stack load only when a model is opened
    import torch

    from amoeba_search.models.session import LoadedSupernet

logger = logging.getLogger(__name__)

__all__ = ["Artefacts", "Costs", "Session", "TableChoice", "adapter_config", "cost_label", "defaults_for",
           "finetune", "finetune_space", "latency_model", "memory_budget", "new_adapter", "open_session",
           "open_supernet", "predictor_path", "resolve_artefacts", "resolve_compute", "resolve_table",
           "seed_everything", "study_tag", "table_location"]


def resolve_compute(device: str = "auto", dtype: str = "auto", *, rank: int = 0, allow_slow: bool = False):
    """:func:`amoeba_search.compute.resolve_compute` (imported on use: it needs torch)."""
    from amoeba_search.compute import resolve_compute as resolve

    return resolve(device, dtype, rank=rank, allow_slow=allow_slow)


def defaults_for(model: str) -> Artefacts:
    """The strategy and adapter ``model`` runs with when none is named: the committed ones of the default model,
    none for any other model."""
    return resolve_artefacts(model)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (the library's own samplers take explicit seeds)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- a loaded model -----------------------------------------------------------------------------------------

@dataclass
class Session:
    """A model opened with its artefacts on a resolved device and dtype."""

    loaded: Any  # models.session.LoadedSupernet (from open_supernet)
    artefacts: Artefacts
    compute: Any  # compute.Compute

    def describe(self) -> str:
        return f"{self.compute.describe()}; {self.artefacts.describe()}"


def open_supernet(spec: str = "smollm2-135m", strategy: str | Path | None = None,
                  adapter: str | Path | None = None, *, dtype=None,
                  device: str | torch.device = "cpu", device_map: str | dict | None = None,
                  max_memory: dict | None = None) -> LoadedSupernet:
    """Load ``spec`` in ``dtype`` on ``device`` (or spread by ``device_map``), check ``strategy`` was made for
    it, order widths by the strategy's importance (and turn on bias compensation when the strategy stores
    channel means) and, with ``adapter`` (an amoeba-finetune output), add the fine-tuned SMoL adapter to every
    forward pass. ``dtype``: a torch dtype (default float32)."""
    import torch

    from amoeba_search.fingerprint import model_fingerprint
    from amoeba_search.models.loading import ALIASES, load_model
    from amoeba_search.models.session import LoadedSupernet
    from amoeba_search.models.supernet import Supernet
    from amoeba_search.strategy import SelectionStrategy

    dtype = torch.float32 if dtype is None else dtype
    chosen = None if strategy is None else SelectionStrategy.load(strategy)  # fail fast, before the weights
    model, tokenizer = load_model(spec, dtype=dtype, device=device, device_map=device_map, max_memory=max_memory)
    fingerprint = model_fingerprint(model, name=spec)
    if chosen is not None:
        chosen.check_model(fingerprint)
    supernet = Supernet(model,
                        ffn_orders=chosen.ffn_orders if chosen else None,
                        head_orders=chosen.head_orders if chosen else None,
                        channel_means=chosen.channel_means if chosen else None)
    provenance = {"source_model": spec, "source_fingerprint": fingerprint}
    if strategy is not None:
        provenance["strategy"] = str(strategy)
    if spec in ALIASES:
        provenance["source_gguf"] = str(ALIASES[spec].path())
    elif str(spec).endswith(".gguf"):
        provenance["source_gguf"] = str(Path(spec).expanduser().resolve())
    loaded = LoadedSupernet(spec, supernet, tokenizer, fingerprint, chosen,
                            None if strategy is None else str(strategy), provenance)
    if adapter is not None:
        from amoeba_search.finetune.smol import SMoLAdapter

        loaded.adapter = SMoLAdapter.load(adapter, supernet).attach().eval()
        loaded.provenance["adapter"] = str(adapter)
    logger.info("loaded %s (%s on %s), strategy %s, adapter %s", spec, dtype, device, strategy, adapter)
    return loaded


def open_session(model: str = "smollm2-135m", strategy=None, adapter=None, *, no_adapter: bool = False,
                 device: str = "auto", dtype: str = "auto", rank: int = 0, **load_options) -> Session:
    """Open ``model`` with ``strategy`` and ``adapter`` (default: :func:`defaults_for`) on ``device`` in
    ``dtype`` (``"auto"``: see :mod:`amoeba_search.compute`); ``load_options`` go to ``open_supernet``."""
    artefacts = resolve_artefacts(model, strategy, adapter, no_adapter=no_adapter)
    compute = resolve_compute(device, dtype, rank=rank)
    loaded = open_supernet(model, artefacts.strategy, adapter=artefacts.adapter, dtype=compute.dtype,
                           device=compute.device, **load_options)
    logger.info("opened %s on %s with %s", model, compute.describe(), artefacts.describe())
    return Session(loaded, artefacts, compute)


# -- fine-tuning --------------------------------------------------------------------------------------------

def adapter_config(dims, **overrides):
    """The SMoL settings amoeba-finetune uses for a model of ``dims``: :class:`SMoLConfig`'s defaults, with the
    rank scaled to the model (``default_rank``) and alpha twice the rank unless given (``None`` = default)."""
    from amoeba_search.finetune.smol import SMoLConfig, default_rank

    given = {k: v for k, v in overrides.items() if v is not None}
    rank = given.setdefault("rank", default_rank(dims))
    given.setdefault("alpha", 2.0 * rank)
    return SMoLConfig(**given)


def finetune_space(loaded, min_depth: int | None = None):
    """The shapes fine-tuning samples: the model's space down to ``min_depth`` (default: the strategy's
    smallest depth; only the full depth without a strategy)."""
    if min_depth is None and loaded.strategy is None:
        min_depth = loaded.supernet.dims.num_layers
    return loaded.space(min_depth=min_depth)


def new_adapter(loaded, space=None, config=None, *, seed: int = 0):
    """A fresh SMoL adapter for ``loaded`` whose shape gate is centred on every (shape, kept layers) route of
    ``space`` (default :func:`finetune_space`), in fp32 (16-bit base weights train under autocast): the adapter
    amoeba-finetune trains. ``config``: a ``SMoLConfig`` (default :func:`adapter_config`)."""
    import torch

    from amoeba_search.finetune.smol import SMoLAdapter

    space = finetune_space(loaded) if space is None else space
    config = adapter_config(loaded.supernet.dims) if config is None else config
    return SMoLAdapter(loaded.supernet, config, seed=seed, center_on=loaded.routes(space), dtype=torch.float32)


def finetune(loaded, data, out_dir, *, train=None, smol=None, space=None, resume: bool = False,
             on_step: Callable[[dict], None] | None = None, run_info: dict | None = None) -> dict:
    """One-for-all fine-tuning of ``loaded`` on ``data`` (a ``TrainingData``, e.g. ``load_training_data(...,
    seq_len=train.seq_len)``) into ``out_dir``, exactly as amoeba-finetune runs it: a gate-centred adapter
    (:func:`new_adapter`, seeded with ``train.seed``), the global generators seeded, then ``Trainer.run``.

    ``train``: a ``TrainConfig`` (default: its published defaults); ``smol``: a ``SMoLConfig`` (default
    :func:`adapter_config`); ``space``: default :func:`finetune_space`. The trained adapter stays attached as
    ``loaded.adapter`` (``loaded.export`` merges it). Returns the trainer's summary plus the adapter's size.
    """
    from amoeba_search.finetune.trainer import TrainConfig, Trainer

    train = TrainConfig() if train is None else train
    space = finetune_space(loaded) if space is None else space
    adapter = new_adapter(loaded, space, smol, seed=train.seed)
    trainer = Trainer(loaded, adapter, data, train, out_dir, space, run_info=run_info)
    seed_everything(train.seed)
    summary = trainer.run(resume=resume, on_step=on_step)
    loaded.adapter = adapter
    summary["trainable_parameters"] = adapter.describe()["trainable_parameters"]
    return summary


# -- search: latency, memory, predictor, study ----------------------------------------------------------------

@dataclass
class TableChoice:
    """The latency table a search uses (``table`` None: estimate from the device's spec sheet)."""

    path: Path | None
    table: Any  # profiling.lut.LatencyTable | None
    device: str | None
    flow: str | None


def resolve_table(model: str, device: str | None = None, flow: str | None = None, table=None, *,
                  roofline: bool = False) -> TableChoice:
    """The measured table of ``model`` on ``device`` (default cpu) and ``flow`` (default torch) by the one lookup
    rule (:func:`amoeba_search.profiling.table_path`), or ``table`` (checked against any device/flow given);
    nothing to load with ``roofline``."""
    if table is None:
        device, flow = device or "cpu", flow or "torch"
    if roofline:
        return TableChoice(None, None, device, flow)
    from amoeba_search.profiling.lut import LatencyTable

    path = table_location(model, device, flow, table)
    loaded = LatencyTable.load(path)
    for name, wanted in (("flow", flow), ("device", device)):
        if wanted is not None and getattr(loaded, name) != wanted:
            raise InputError(f"{path} is a table for {name} {getattr(loaded, name)!r}, not {wanted!r}; "
                             f"pass the table measured for it (amoeba-profile --device D --flow F)")
    return TableChoice(path, loaded, device, flow)


def table_location(model: str, device: str | None, flow: str | None, table=None) -> Path:
    """``table`` if given, else the table of ``model``, ``device`` and ``flow`` by the one lookup rule (see
    :func:`amoeba_search.profiling.table_path`; raises ``FileNotFoundError`` naming where it looked)."""
    if table is not None:
        return Path(table)
    from amoeba_search.profiling import table_path

    return table_path(model, device or "cpu", flow or "torch")


@dataclass
class Costs:
    """What a search budgets: a cost per shape, where it came from, and the table or estimator behind it."""

    source: Any  # LatencyTable or FlowEstimator
    cost_fn: Callable
    label: str
    device: str
    flow: str
    dtype: str
    kind: str  # "measured" or "estimate"
    machine_warning: str | None = None


def latency_model(choice: TableChoice, config, model: str, metric: str = "decode") -> Costs:
    """The cost of a shape under ``metric`` (decode, prefill, e2e or energy) from ``choice``'s table (checked to
    belong to ``model``), or a roofline estimate for its device and flow when it has none."""
    if choice.table is None:
        from amoeba_search.profiling.devices import get_device
        from amoeba_search.profiling.estimate import FlowEstimator

        device, flow = choice.device or "cpu", choice.flow or "torch"  # --table with --roofline leaves them unset
        estimator = FlowEstimator(get_device(device), config, flow=flow)
        costs = Costs(estimator, lambda s: estimator.predict(s, metric=metric), estimator.label, device, flow,
                      estimator.settings["dtype"], "estimate")
    else:
        from amoeba_search.profiling.lut import table_machine_warning
        from amoeba_search.profiling.machine import detect_machine
        from amoeba_search.profiling.model_source import table_fingerprint

        table = choice.table
        table.check_model(table_fingerprint(model, config))
        warning = table_machine_warning(table, detect_machine())
        if warning:
            logger.info("%s", warning)  # returned too: the caller decides how loudly to say it
        costs = Costs(table, lambda s: table.predict(s, metric=metric),
                      f"lookup table {choice.path.name} ({table.flow} on {table.device}, measured)",
                      table.device, table.flow, table.dtype, "measured", warning)
    if metric == "energy":
        from amoeba_search.search.costs import ENERGY_COLUMN, energy_predictor

        if choice.table is None:
            raise InputError("--metric energy needs a measured table with energy columns; an estimate (--roofline) "
                             "has none: drop --roofline or use --metric decode")
        costs.cost_fn = energy_predictor(choice.table)
        costs.label = (f"energy table {choice.path.name} ({ENERGY_COLUMN}, {costs.flow} on {costs.device}, "
                       "measured)")
    return costs


def cost_label(metric: str, flow: str, device: str) -> str:
    if metric == "energy":
        return f"decode energy (mJ/token), {flow} on {device}"
    return f"{metric} latency (ms{'/token' if metric == 'decode' else ''}), {flow} on {device}"


def memory_budget(budget_mb: float | None, costs_source, config, dtype: str) -> tuple[dict, dict]:
    """``run_job``'s memory arguments for a budget of ``budget_mb`` MB of weights + KV cache (at the table's or
    estimator's batch and context length) and the settings that record them; both empty without a budget."""
    if budget_mb is None:
        return {}, {}
    if budget_mb <= 0:
        raise InputError(f"--memory-budget-mb must be positive, got {budget_mb:g}")
    from amoeba_search.profiling.roofline import memory_footprint_bytes

    keys = costs_source.settings if hasattr(costs_source, "settings") else costs_source.key
    context, batch = int(keys["context_len"]), int(keys["batch"])
    settings = {"memory_budget_mb": budget_mb,
                "memory_source": f"weights + KV cache computed from the config ({dtype}, batch {batch}, "
                                 f"context {context} tokens; runtime overheads excluded)"}
    return {"memory_budget_mb": budget_mb,
            "memory_fn": lambda s: memory_footprint_bytes(config, s, dtype=dtype, context=context,
                                                          batch=batch) / 2**20}, settings


def predictor_path(model: str, name: str, space, oracle, *, given: str | os.PathLike | None = None,
                   out: str | os.PathLike | None = None) -> Path:
    """Where the accuracy predictor is read from and, when it must be (re)fit, written to.

    ``given`` (``--predictor``): that file, unless it is a committed file that was fit with other settings;
    otherwise the committed ``name`` of the default model when it was fit with exactly these settings (model,
    strategy, adapter, data). Every refit goes to ``out`` (``--out``), else to the user's cache
    (``cache_dir("predictors", <model>)``): a committed file is only ever read.
    """
    from amoeba_search.search.job import predictor_matches

    if given is not None:
        given = Path(given)
        if not is_committed(given) or predictor_matches(given, space, oracle):
            return given
        target = _refit_dir(model, out) / given.name
        logger.info("%s is committed and was fit with other settings: the refit goes to %s", given, target)
        return target
    committed = committed_dir(model)
    if committed is not None and predictor_matches(committed / name, space, oracle):
        return committed / name
    return _refit_dir(model, out) / name


def _refit_dir(model: str, out) -> Path:
    if out is not None:
        return Path(out)
    from amoeba_search.paths import cache_dir
    from amoeba_search.profiling import model_slug

    return cache_dir("predictors", model_slug(model))


def study_tag(settings: dict, oracle_settings: dict) -> str:
    """A short hash naming the Optuna study of these settings (a rerun with the same ones continues it)."""
    payload = json.dumps([settings, oracle_settings], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:10]

