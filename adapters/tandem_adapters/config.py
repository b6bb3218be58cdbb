"""Job configuration: a TOML file with [run], [data], [model], [train] tables, ``--set`` overrides.

Everything is validated before any work starts: an unknown table or key, a value of the wrong type,
or an out-of-range value raises ``ConfigError`` naming ``table.key``.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tandem_core.config import ConfigError, TrainConfig
from tandem_core.taskpgm import AFFINITY_KINDS, SOLVER_METHODS, UTILITY_KINDS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "DataConfig",
    "JobConfig",
    "ModelConfig",
    "RunConfig",
    "TaskPGMConfig",
    "parse_override",
]

BACKENDS = ("torch", "jax")


@dataclass(frozen=True)
class RunConfig:
    """Where and how a job runs."""

    backend: str = "torch"  # torch | jax
    run_dir: str = "runs/tandem"
    device: str = ""  # torch device ("cpu", "cuda:0"); empty: CUDA if available
    threads: int = 0  # CPU threads for torch (0: torch's default)
    checkpoint_every: int = 100  # proxy steps between checkpoints (0: only at the end)
    progress: bool = True
    nproc: int = 1  # torch: data-parallel processes (torchrun; gloo on CPU, NCCL on CUDA)
    devices: int = 0  # jax: devices on the data axis (0 or 1: one device)
    jax_distributed: bool = False  # jax: call jax.distributed.initialize() (multi-host)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"run.backend={self.backend!r} is not one of {BACKENDS}")
        if self.nproc > 1 and self.backend != "torch":
            raise ConfigError("run.nproc is for the torch backend; with jax use run.devices")
        for key in ("threads", "checkpoint_every", "nproc", "devices"):
            if getattr(self, key) < 0:
                raise ConfigError(f"run.{key} must be >= 0, got {getattr(self, key)}")


@dataclass(frozen=True)
class DataConfig:
    """The data: a built-in suite (default) or a folder / local HF dataset of domains."""

    suite: str = "planted"  # used when `path` and `hf_dataset` are empty
    path: str = ""  # folder with one sub-folder or file per domain
    val_path: str = ""  # validation folder with the same domains
    target_path: str = ""  # a separate target validation set (file or folder)
    val_fraction: float = 0.0  # or split each domain's documents
    hf_dataset: str = ""  # a local `datasets.load_from_disk` directory
    domain_field: str = "domain"  # (hf_dataset) the column naming the domain
    text_field: str = "text"
    tokenizer: str = ""  # a local tokenizer.json (default: byte-level)
    bin_dtype: str = "uint16"
    seq_len: int = 32
    seed: int = 0
    suite_vocab_size: int = 32
    suite_tokens_per_domain: int = 20000
    suite_val: str = "target"  # target | per_domain

    def __post_init__(self) -> None:
        if self.seq_len < 2:
            raise ConfigError(f"data.seq_len must be >= 2, got {self.seq_len}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.path and self.hf_dataset:
            raise ConfigError("data.path and data.hf_dataset are exclusive: give one")


@dataclass(frozen=True)
class ModelConfig:
    """The proxy model: the built-in tiny GPT, a local Hugging Face config/model, or a factory."""

    kind: str = "tiny_gpt"  # tiny_gpt | hf | module
    d_model: int = 64
    n_layer: int = 2
    n_head: int = 4
    mlp_ratio: int = 4
    hf_config: str = ""  # (hf) local config.json or folder: random init from the config
    hf_path: str = ""  # (hf) local folder with weights (from_pretrained, local files only)
    module: str = ""  # (module) "package.module:factory", called as factory(vocab_size, seq_len)
    seed: int = 0

    def __post_init__(self) -> None:
        kinds = ("tiny_gpt", "hf", "module")
        if self.kind not in kinds:
            raise ConfigError(f"model.kind={self.kind!r} is not one of {kinds}")
        if self.kind == "hf" and not (self.hf_config or self.hf_path):
            raise ConfigError("model.kind='hf' needs model.hf_config or model.hf_path")
        if self.kind == "module" and ":" not in self.module:
            raise ConfigError("model.kind='module' needs model.module='package.module:factory'")
        for key in ("d_model", "n_layer", "n_head", "mlp_ratio"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key} must be >= 1, got {getattr(self, key)}")


@dataclass(frozen=True)
class TaskPGMConfig:
    """TaskPGM (SPEC 3): single-task fine-tunes, probe divergences, energy on the simplex."""

    finetune_steps: int = 100  # optimizer steps of each single-task fine-tune (SPEC 3.3 step 1)
    probe: str = ""  # probe set: a file or folder (empty: the corpus's validation/target data)
    probe_max_per_task: int = 64  # probe windows per probe stream (first non-overlapping ones)
    probe_batch_size: int = 16  # probe rows per forward of the N models (N * B * T * V logits)
    top_k: int = 0  # JSD over each pair's top-k tokens, renormalised (0: full vocabulary)
    affinity: str = "linear"  # linear: 1 - D/ln 2 | exp: exp(-D/sigma) | pmi: probe-loss PMI
    sigma: float = 0.0  # (exp) bandwidth; 0: the mean off-diagonal divergence
    utility: str = "gain"  # gain | coverage | mix (SPEC 3.3 step 3)
    mix: float = 0.5  # (mix) weight of the gain part
    lam: float = 1.0  # redundancy strength lambda
    mu: float = 0.0  # ridge; 0: tandem_core.default_mu (the smallest safe one, at least lam)
    method: str = "active_set"  # active_set | pgd | mean_field
    tau_e: float = 0.1  # (mean_field) entropy temperature
    budget: int = 0  # k > 0: greedy subset of at most k tasks (SPEC 3.3 step 5); 0: continuous
    subset_weights: str = "uniform"  # (budget) uniform | utility weights over the subset

    def __post_init__(self) -> None:
        for key, allowed in (
            ("affinity", (*AFFINITY_KINDS, "pmi")),
            ("utility", UTILITY_KINDS),
            ("method", SOLVER_METHODS),
            ("subset_weights", ("uniform", "utility")),
        ):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"taskpgm.{key}={getattr(self, key)!r} is not one of {allowed}")
        for key in ("finetune_steps", "probe_max_per_task", "probe_batch_size", "tau_e"):
            value = getattr(self, key)
            if not 0 < value < float("inf"):
                raise ConfigError(f"taskpgm.{key} must be finite and > 0, got {value}")
        for key in ("top_k", "sigma", "lam", "mu", "budget"):
            value = getattr(self, key)
            if not 0 <= value < float("inf"):  # also rejects NaN
                raise ConfigError(f"taskpgm.{key} must be finite and >= 0, got {value}")
        if not 0 <= self.mix <= 1:
            raise ConfigError(f"taskpgm.mix must be in [0, 1], got {self.mix}")
        if self.sigma and self.affinity != "exp":
            raise ConfigError("taskpgm.sigma applies only to taskpgm.affinity='exp'")


@dataclass(frozen=True)
class JobConfig:
    """A whole job: the four tables."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    taskpgm: TaskPGMConfig = field(default_factory=TaskPGMConfig)

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] = ()) -> JobConfig:
        """Read a TOML file (optional) and apply ``table.key=value`` overrides.

        Raises:
            ConfigError: unreadable TOML, unknown table/key, wrong type, out-of-range value.
        """
        tables: dict[str, dict[str, Any]] = {}
        if path is not None:
            try:
                tables = tomllib.loads(Path(path).read_text())
            except tomllib.TOMLDecodeError as err:
                raise ConfigError(f"{path}: invalid TOML ({err})") from err
        for item in overrides:
            table, key, value = parse_override(item)
            tables.setdefault(table, {})[key] = value
        return cls.from_mapping(tables)

    @classmethod
    def from_mapping(cls, tables: dict[str, dict[str, Any]]) -> JobConfig:
        """Build from ``{table: {key: value}}``, checking names and types."""
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(tables) - set(sections))
        if unknown:
            raise ConfigError(f"unknown table(s) {unknown}; known tables: {sorted(sections)}")
        built = {}
        for name, section_cls in _SECTION_TYPES.items():
            values = dict(tables.get(name, {}))
            if not isinstance(values, dict):
                raise ConfigError(f"[{name}] must be a table")
            if section_cls is TrainConfig:
                built[name] = _train(values)
            else:
                built[name] = _section(name, section_cls, values)
        return cls(**built)

    def to_mapping(self) -> dict[str, dict[str, Any]]:
        """``{table: {key: value}}`` for config.toml."""
        out = {name: dataclasses.asdict(getattr(self, name)) for name in _SECTION_TYPES}
        return {k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in out.items()}

    def replace(self, **tables: Any) -> JobConfig:
        """A copy with some tables' fields replaced: ``cfg.replace(train={"steps": 10})``."""
        mapping = self.to_mapping()
        for name, values in tables.items():
            mapping.setdefault(name, {}).update(values)
        return JobConfig.from_mapping(mapping)


_SECTION_TYPES = {
    "run": RunConfig,
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "taskpgm": TaskPGMConfig,
}


def _train(values: dict[str, Any]) -> TrainConfig:
    try:
        return TrainConfig.from_mapping(values)
    except ConfigError as err:
        raise ConfigError(f"[train] {err}") from err


def _section(name: str, cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {[f'{name}.{k}' for k in unknown]}; known: {sorted(hints)}"
        )
    for key, value in values.items():
        want = hints[key]
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            values[key] = float(value)
        elif not isinstance(value, want) or (isinstance(value, bool) and want is not bool):
            raise ConfigError(
                f"{name}.{key} must be {want.__name__}, got {type(value).__name__} {value!r}"
            )
    return cls(**values)


def parse_override(item: str) -> tuple[str, str, Any]:
    """``"train.lr=1e-3"`` -> ``("train", "lr", 0.001)``; values are TOML, else plain strings."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected table.key=value")
    name, raw = item.split("=", 1)
    if name.count(".") != 1:
        raise ConfigError(f"--set {item!r}: the key must be table.key (e.g. train.lr=1e-3)")
    table, key = name.strip().split(".")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word: backend=jax
    return table, key, value
