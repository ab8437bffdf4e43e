"""SMoL: a shape-aware mixture of LoRAs on the supernet's linear layers.

Every target linear of every block gets T LoRA experts (A: (T, r, in), B: (T, out, r)). One gate, shared by
all layers, reads the *subnet shape* (which layers are kept, FFN and heads ratio), not the tokens, and picks
the top-k experts with softmax weights: noisy top-k while training, deterministic in eval mode. The gate always
routes by the shape the supernet is set to. The adapter lives beside the model and joins it through forward
hooks, so the HF model stays unmodified; the factors are sliced with the weights (A's columns with the active
inputs, B's rows with the active outputs), so one adapter serves every width.

Positions are the supernet's *physical* ones (importance-ordered, rank-major heads), so an adapter belongs to
the channel/head order it was trained with; ``order_digest`` records it and loading checks it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from amoeba_search.errors import InputError
from amoeba_search.models.supernet import SlicedLinear, Supernet
from amoeba_search.paths import atomic_dir
from amoeba_search.shapes import ModelDims, SubnetShape

SCHEMA_VERSION = 3  # 2: the mixture is scaled by top_k (see SMoLConfig.scaling); 3: the gate's input is centred
READABLE_SCHEMAS = (2, 3)
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class AdapterMismatchError(InputError):
    """The adapter was trained for another model or another channel/head order."""


def default_rank(dims: ModelDims) -> int:
    """The paper's rank 64 at LLaMA-2-7B's hidden size 4096, scaled to this model (a multiple of 4, >= 4)."""
    return max(4, int(round(64 * dims.hidden_size / 4096 / 4)) * 4)


@dataclass(frozen=True)
class SMoLConfig:
    """The adapter's settings; amoeba-finetune takes its flag defaults and help from here. ``rank`` and ``alpha``
    are this class's fixed defaults; amoeba-finetune and ``session.adapter_config`` scale the rank to the model
    (``default_rank``) and set alpha to twice the rank unless given."""

    num_experts: int = field(default=5, metadata={"help": "LoRA experts T"})
    top_k: int = field(default=2, metadata={"help": "experts mixed per shape"})
    rank: int = field(default=8, metadata={"help": "LoRA rank of every expert"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (scale alpha / rank per expert)"})
    targets: tuple[str, ...] = field(default=TARGETS, metadata={"help": "linear layers that get experts"})
    noise: bool = field(default=True, metadata={"help": "noisy top-k routing while training"})
    # Shazeer et al. start at 0.69; learned from here
    noise_std: float = field(default=0.1, metadata={
        "help": "initial std of the gate's learned routing noise while training"})

    def __post_init__(self):
        if self.num_experts < 1 or not 1 <= self.top_k <= self.num_experts:
            raise InputError(f"need 1 <= top_k <= experts, got top_k={self.top_k}, experts={self.num_experts}")
        if self.rank < 1 or self.alpha <= 0:
            raise InputError(f"LoRA rank and alpha must be positive, got rank={self.rank}, alpha={self.alpha}")
        if not self.noise_std > 0:
            raise InputError(f"the gate's initial noise std must be positive, got {self.noise_std} "
                             "(to route without noise, set noise=False)")
        unknown = sorted(set(self.targets) - set(TARGETS))
        if unknown or not self.targets:
            raise InputError(f"unknown LoRA target(s) {unknown}; choose from {', '.join(TARGETS)}")
        object.__setattr__(self, "targets", tuple(self.targets))

    @property
    def scaling(self) -> float:
        """alpha / rank per expert, times top_k: the gate's k weights sum to 1, so without the factor k experts
        of rank r would act as one LoRA of rank k*r at 1/k of its scale, and top_k would silently set the
        effective learning rate."""
        return self.alpha / self.rank * self.top_k


def order_digest(supernet: Supernet) -> str:
    """A hash of the supernet's physical channel and head order (what adapter positions refer to)."""
    payload = json.dumps([[t.tolist() for t in supernet.ffn_index], [t.tolist() for t in supernet.head_index]])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class ShapeGate(nn.Module):
    """Noisy top-k gate over experts whose input is the shape: a kept-layer mask plus the width ratios, minus
    ``center`` (the search space's mean shape, see ``SMoLAdapter``; zeros when not given).

    Uncentred, the features of all shapes share a large common part (the layers that every depth keeps, and
    the DP's nested layer sets), so a random init routes every shape to the same top expert: on SmolLM2's
    240-shape space one expert of five was in all 240 routes. Centred, the initial routes spread over the experts.
    The noise std is softplus(W_noise x + b), learned; b starts at softplus^-1(noise_std). Shazeer et al.'s zero
    init (std 0.69) is larger than the spread of the initial routing logits (std ~0.1 * sqrt(kept layers) ~ 0.5),
    so it would route almost at random while the experts are still being formed.
    """

    def __init__(self, num_layers: int, num_experts: int, top_k: int, *, noise: bool, noise_std: float):
        super().__init__()
        self.num_layers, self.top_k, self.noisy = num_layers, top_k, noise
        self.route = nn.Linear(num_layers + 2, num_experts)
        self.noise = nn.Linear(num_layers + 2, num_experts)
        nn.init.normal_(self.route.weight, std=0.1)  # distinct shapes start with distinct (tie-free) routes
        nn.init.zeros_(self.route.bias)
        nn.init.zeros_(self.noise.weight)
        nn.init.constant_(self.noise.bias, math.log(math.expm1(noise_std)))  # softplus(bias) = noise_std
        self.register_buffer("center", torch.zeros(num_layers + 2))

    def raw_features(self, shape: SubnetShape, layers: Sequence[int] | None) -> torch.Tensor:
        """(num_layers + 2,): 1 for each kept layer (``None``: all), then the FFN and heads ratios."""
        x = torch.zeros(self.num_layers + 2)
        x[list(range(self.num_layers) if layers is None else layers)] = 1.0
        x[-2], x[-1] = shape.ffn_ratio, shape.heads_ratio
        return x

    def features(self, shape: SubnetShape, layers: Sequence[int] | None) -> torch.Tensor:
        return self.raw_features(shape, layers).to(self.route.weight) - self.center

    @torch.no_grad()
    def center_on(self, routes: Sequence[tuple[SubnetShape, Sequence[int] | None]]) -> None:
        """Set ``center`` to the mean raw features of ``routes`` ((shape, kept layers) pairs)."""
        self.center.copy_(torch.stack([self.raw_features(s, l) for s, l in routes]).mean(0))

    def forward(self, features: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Dense expert weights (T,): softmax over the top-k logits, zero elsewhere."""
        logits = self.route(features)
        if self.training and self.noisy:
            noise = torch.randn(logits.shape, generator=generator).to(logits)  # CPU generator: reproducible
            logits = logits + noise * F.softplus(self.noise(features))
        top = logits.topk(self.top_k)
        return torch.zeros_like(logits).scatter(0, top.indices, torch.softmax(top.values, dim=0))


class LoRAExperts(nn.Module):
    """T LoRA factor pairs for one linear layer of shape (out, in)."""

    def __init__(self, in_features: int, out_features: int, num_experts: int, rank: int):
        super().__init__()
        self.A = nn.Parameter(torch.empty(num_experts, rank, in_features))  # (T, r, in)
        self.B = nn.Parameter(torch.zeros(num_experts, out_features, rank))  # (T, out, r): starts as a no-op
        for a in self.A:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))

    def delta(self, x: torch.Tensor, weights: torch.Tensor, active_in: int | None, active_out: int | None,
              scaling: float) -> torch.Tensor:
        """sum_t w_t B_t A_t x over the experts with non-zero weight, sliced to the active widths."""
        chosen = weights.nonzero().flatten()
        k, r = len(chosen), self.A.shape[1]
        a = self.A[chosen, :, :active_in].reshape(k * r, -1)                         # (k*r, in')
        b = self.B[chosen, :active_out].permute(1, 0, 2).reshape(-1, k * r)          # (out', k*r)
        h = F.linear(x, a) * weights[chosen].repeat_interleave(r).to(x.dtype)         # (..., k*r)
        return F.linear(h, b) * scaling                                              # (..., out')

    def merged_delta(self, weights: torch.Tensor, scaling: float) -> torch.Tensor:
        """The full (out, in) weight update of this mixture, in fp32 (16-bit weights then round it once)."""
        return torch.einsum("t,tor,tri->oi", weights.float(), self.B.float(), self.A.float()) * scaling


class SMoLAdapter(nn.Module):
    """The adapter: a shape gate plus LoRA experts for every target linear of every layer of ``supernet``.

    ``center_on``: the shapes the adapter will route, each with its kept layers (``None``: all), such as a search
    space with the strategy's layers; the gate's input is centred on their mean. Without it, it is not centred.
    ``dtype``: of the adapter's weights (default: the model's); placed on the model's device.
    """

    def __init__(self, supernet: Supernet, config: SMoLConfig = SMoLConfig(), *, seed: int = 0,
                 center_on: Sequence[tuple[SubnetShape, Sequence[int] | None]] | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.config, self.dims = config, supernet.dims
        self.order = order_digest(supernet)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.gate = ShapeGate(self.dims.num_layers, config.num_experts, config.top_k, noise=config.noise,
                                  noise_std=config.noise_std)
            if center_on:
                self.gate.center_on(center_on)
            self.experts = nn.ModuleDict()
            for index, layer in enumerate(supernet.layers):
                for name in config.targets:
                    linear = _target(layer, name)
                    self.experts[_key(index, name)] = LoRAExperts(linear.in_features, linear.out_features,
                                                                  config.num_experts, config.rank)
        weight = next(supernet.model.parameters())
        self.to(weight.device, dtype or weight.dtype)  # training keeps it in fp32 over 16-bit weights (autocast)
        self.supernet = [supernet]  # a list keeps it out of this module's parameters and state dict
        self.noise_generator = torch.Generator()
        self._weights: torch.Tensor | None = None
        self._handles: list = []  # forward hooks while attached

    # -- routing -------------------------------------------------------------------------------------

    def expert_weights(self) -> torch.Tensor:
        """The gate's weights for the supernet's active shape (fresh noise each call while training)."""
        supernet = self.supernet[0]
        features = self.gate.features(supernet.active_shape, supernet.active_layers)
        return self.gate(features, self.noise_generator)

    # -- joining the model ---------------------------------------------------------------------------

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> "SMoLAdapter":
        """Add the experts to every forward of the supernet's model (idempotent)."""
        if self._handles:
            return self
        supernet = self.supernet[0]
        # On the decoder stack, not the LM head wrapper: callers that run ``model.model`` directly route too.
        handles = [supernet.model.model.register_forward_pre_hook(self._route_hook)]
        for index, layer in enumerate(supernet.layers):
            for name in self.config.targets:
                handles.append(_target(layer, name).register_forward_hook(self._lora_hook(_key(index, name))))
        self._handles = handles
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _route_hook(self, module, args):
        self._weights = self.expert_weights()  # once per model forward, shared by every layer

    def _lora_hook(self, key: str):
        experts, scaling = self.experts[key], self.config.scaling

        def hook(module: SlicedLinear, args, output):
            return output + experts.delta(args[0], self._weights, module.active_in, module.active_out, scaling)

        return hook

    # -- merging into plain weights ------------------------------------------------------------------

    @contextlib.contextmanager
    @torch.no_grad()
    def merged(self, shape: SubnetShape, layers: Sequence[int]):
        """Fold the eval-mode mixture for ``shape`` into the kept layers' weights; restore them on exit.

        Inside, the supernet set to ``shape`` computes the fine-tuned subnet with no adapter code (the hooks
        are detached), so ``export_subnet`` writes a plain checkpoint.
        """
        supernet = self.supernet[0]
        supernet.set_active(shape, layers)
        was_training, was_attached = self.training, self.attached
        self.eval()
        self.detach()
        weights = self.gate(self.gate.features(shape, supernet.active_layers))
        saved = {}
        try:
            for index in supernet.active_layers:
                for name in self.config.targets:
                    linear = _target(supernet.layers[index], name)
                    saved[(index, name)] = linear.weight.data.clone()
                    delta = self.experts[_key(index, name)].merged_delta(weights, self.config.scaling)
                    # only the slice the subnet runs: the rest is never trained, and bias compensation reads it
                    rows, cols = linear.active_out, linear.active_in
                    linear.weight.data[:rows, :cols] += delta[:rows, :cols]
            yield supernet
        finally:
            for (index, name), original in saved.items():
                _target(supernet.layers[index], name).weight.data = original
            self.train(was_training)
            if was_attached:
                self.attach()

    # -- files ---------------------------------------------------------------------------------------

    def identity(self) -> str:
        """A digest of the adapter's weights and settings: what makes evaluations with it comparable."""
        digest = hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode())
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        return digest.hexdigest()[:16]

    def describe(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "kind": "smol-adapter", "config": asdict(self.config),
                "dims": self.dims.to_dict(), "order_digest": self.order,
                "trainable_parameters": sum(p.numel() for p in self.parameters())}

    def save(self, directory: str | Path, *, extra: dict | None = None, overwrite: bool = True) -> Path:
        """Write ``adapter.safetensors`` + ``adapter.json`` atomically to ``directory``."""
        with atomic_dir(directory, overwrite=overwrite) as tmp:
            self.write_into(tmp, extra=extra)
        return Path(directory)

    def write_into(self, directory: Path, *, extra: dict | None = None) -> None:
        tensors = {name: t.detach().contiguous() for name, t in self.state_dict().items()}
        save_file(tensors, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (directory / ADAPTER_CONFIG).write_text(json.dumps({**self.describe(), **(extra or {})}, indent=2))

    def is_finite(self) -> bool:
        """Whether every weight of the adapter is finite (no NaN or inf)."""
        return all(bool(torch.isfinite(p).all()) for p in self.state_dict().values() if p.is_floating_point())

    @classmethod
    def load(cls, directory: str | Path, supernet: Supernet) -> "SMoLAdapter":
        """Read an adapter for ``supernet``; refuse one made for another model or channel order.

        ``directory`` is an adapter directory, a checkpoint of a run, or the run's ``--out`` (its final adapter).
        """
        directory = Path(directory)
        if not (directory / ADAPTER_CONFIG).is_file() and (directory / "adapter" / ADAPTER_CONFIG).is_file():
            directory = directory / "adapter"
        config_path = directory / ADAPTER_CONFIG
        if not config_path.is_file():
            raise FileNotFoundError(f"{directory} is not an adapter directory (no {ADAPTER_CONFIG}); "
                                    "pass the --out of amoeba-finetune or one of its checkpoints")
        from amoeba_search.jsonfile import read_json

        record = read_json(config_path, what="adapter config", fix="pass the --out of amoeba-finetune")
        if record.get("kind") != "smol-adapter":
            raise InputError(f"{config_path}: not a SMoL adapter")
        schema = record.get("schema_version")
        if schema not in READABLE_SCHEMAS:
            raise InputError(f"{config_path}: a schema-{schema} SMoL adapter, this version reads schemas "
                             f"{', '.join(map(str, READABLE_SCHEMAS))} (the mixture's scale changed in schema 2); "
                             "run amoeba-finetune again")
        missing = [key for key in ("dims", "order_digest", "config") if key not in record]
        if missing or not isinstance(record["config"], dict) or "targets" not in record["config"]:
            lacks = ", ".join(map(repr, missing)) if missing else "'config.targets'"
            raise InputError(f"adapter config {config_path} lacks {lacks}; it is damaged: train the adapter again "
                             "with amoeba-finetune")
        if record["dims"] != supernet.dims.to_dict():
            raise AdapterMismatchError(f"the adapter in {directory} was trained for another model "
                                       f"({record['dims']}); pass the model it was trained on")
        if record["order_digest"] != order_digest(supernet):
            raise AdapterMismatchError(f"the adapter in {directory} was trained with another channel/head order; "
                                       "pass the --strategy it was trained with")
        try:
            config = dict(record["config"], targets=tuple(record["config"]["targets"]))
            adapter = cls(supernet, SMoLConfig(**config))
        except (TypeError, ValueError) as err:
            raise InputError(f"adapter config {config_path} holds a config this version cannot build ({err}); "
                             "train the adapter again with amoeba-finetune") from err
        weights = directory / ADAPTER_WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} does not exist; the adapter in {directory} is incomplete: pass the "
                                    "--out of amoeba-finetune or one of its checkpoints")
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError) as err:  # a truncated or empty file
            reason = " ".join(str(err).split()) or type(err).__name__
            raise InputError(f"adapter weights {weights} cannot be read ({reason}); the file is truncated or "
                             "damaged: copy it again or train the adapter again") from err
        if schema == 2:  # its gate read the uncentred shape: the same as a zero centre
            state.setdefault("gate.center", torch.zeros_like(adapter.gate.center))
        try:
            adapter.load_state_dict(state)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0]
            raise InputError(f"adapter weights {weights} do not fit the adapter its config describes ({first}); "
                             "the files come from different runs: train the adapter again") from err
        return adapter.eval()


def _key(index: int, name: str) -> str:
    return f"{index}_{name}"


def _target(layer: nn.Module, name: str) -> SlicedLinear:
    owner = layer.self_attn if name in ("q_proj", "k_proj", "v_proj", "o_proj") else layer.mlp
    return getattr(owner, name)
