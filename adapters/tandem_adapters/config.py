"""Job configuration: a TOML file of [run], [data], [model], [train], [backend] tables.

Each key can be overridden with ``--set table.key=value``. Everything is validated before any
work starts: an unknown table or key, a value of the wrong type, or an out-of-range value raises
``ConfigError`` naming ``table.key``. ``[train]`` is ``tandem_core.run.TrainConfig`` (with the
method's own keys), ``[model]`` is ``tandem_core.run.ModelSpec``, and ``[backend]`` is the options
dataclass of the backend that ``run.backend`` names (``tc.load_backend(name).Options``), so a
plugin backend brings its own keys.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tandem_core import ConfigError
from tandem_core.backend import training_backend
from tandem_core.methods import check_fields
from tandem_core.run import ModelSpec, TrainConfig
from tandem_core.taskpgm import AFFINITY_KINDS, SOLVER_METHODS, UTILITY_KINDS

from .data.formats import BIN_DTYPES
from .data.sft import LAYOUTS as SFT_LAYOUTS
from .data.synthetic import SUITES, VAL_MODES
from .trackers import check_name as check_tracker

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "DataConfig",
    "JobConfig",
    "ModelSpec",
    "RunConfig",
    "TaskPGMConfig",
    "check_against_data",
    "check_run_dir",
    "parse_override",
]


@dataclass(frozen=True)
class RunConfig:
    """Where a job runs: the backend (any registered training backend) and the run directory."""

    backend: str = "torch"  # a `tandem.backends` entry point: torch | jax | a plugin's name
    run_dir: str = "runs/tandem"  # the run's folder (the CLI: runs/<data>-<command>-<time>)
    checkpoint_every: int = 100  # proxy steps between checkpoints (0: only at the end)
    stop_check_every: int = 10  # ticks between the processes' polls that agree on stopping
    progress: bool = True  # a progress bar on the terminal
    report_to: list = field(default_factory=list)  # trackers of the metrics: tensorboard | wandb

    def __post_init__(self) -> None:
        check_fields(
            self, nonnegative=("checkpoint_every",), positive=("stop_check_every",), prefix="run."
        )
        for name in self.report_to:
            check_tracker(name)


@dataclass(frozen=True)
class DataConfig:
    """The data: a built-in suite (default) or a folder / local HF dataset of domains."""

    suite: str = "planted"  # planted | restricted | sft | realtext (without path / hf_dataset)
    path: str = ""  # folder with one sub-folder or file per domain
    val_path: str = ""  # validation folder with the same domains
    target_path: str = ""  # a separate target validation set (file or folder)
    val_fraction: float = 0.0  # or split each domain's documents
    hf_dataset: str = ""  # a local `datasets.load_from_disk` directory
    domain_field: str = "domain"  # (hf_dataset) the column naming the domain
    hf_streaming: bool = False  # (hf_dataset) stream each domain through a bounded token buffer
    stream_buffer_tokens: int = 1 << 20  # (hf_streaming) tokens held per training domain
    stream_val_tokens: int = 0  # (hf_streaming) validation: each domain's first tokens, held out
    text_field: str = "text"  # the text column of .jsonl / .parquet / dataset records
    tokenizer: str = ""  # a local tokenizer.json (default: byte-level)
    bin_dtype: str = "uint16"  # token dtype of .bin files
    raw_dtype: str = ""  # headerless .npy (dolma/OLMo) token files: their dtype ("": an error)
    windows: str = "span"  # span: rows may cross documents | documents: they never do
    # tokenized text cache: "auto" = $TANDEM_CACHE or ~/.cache/tandem/tokens; "" / "none": off
    cache_dir: str = "auto"
    seq_len: int = 32  # tokens per training row
    seed: int = 0  # the suite's generation and the validation split (train.seed: batch order)
    suite_vocab_size: int = 32  # (suite) vocabulary size of the generated data
    suite_tokens_per_domain: int = 20000  # (suite) training tokens per generated domain
    suite_val: str = "target"  # target | per_domain
    format: str = "text"  # text | sft (data.path .jsonl files are instruction records)
    sft_layout: str = "pack"  # (sft) pack: examples joined | pad: one example per row

    def file_options(self) -> dict:
        """The keyword arguments of ``data.formats.read_file`` this table sets."""
        return {
            "text_field": self.text_field,
            "bin_dtype": self.bin_dtype,
            "raw_dtype": self.raw_dtype,
        }

    def __post_init__(self) -> None:
        if self.seq_len < 2:
            raise ConfigError(f"data.seq_len must be >= 2, got {self.seq_len}")
        if not 0 <= self.val_fraction < 1:  # also rejects NaN
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.path and self.hf_dataset:
            raise ConfigError("data.path and data.hf_dataset are exclusive: give one")
        chosen = [k for k in ("val_path", "val_fraction", "target_path") if getattr(self, k)]
        if len(chosen) > 1:
            keys = " and ".join(f"data.{k}" for k in chosen)
            raise ConfigError(f"{keys} are exclusive: give one validation option")
        unused = [k for k in ("val_path", "target_path") if getattr(self, k)]
        if self.format == "sft" and not self.path:
            raise ConfigError(
                "data.format='sft' reads instruction records from data.path (for the built-in "
                "SFT suite use data.suite='sft')"
            )
        if self.hf_dataset and unused:
            raise ConfigError(f"data.{unused[0]} applies to data.path, not to data.hf_dataset")
        if self.hf_streaming and not self.hf_dataset:
            raise ConfigError("data.hf_streaming needs data.hf_dataset (a local saved dataset)")
        if self.hf_streaming and self.val_fraction:
            raise ConfigError(
                "data.val_fraction needs the whole dataset; with data.hf_streaming hold out "
                "each domain's first tokens with data.stream_val_tokens"
            )
        if self.stream_val_tokens and not self.hf_streaming:
            raise ConfigError("data.stream_val_tokens applies to data.hf_streaming only")
        if self.stream_buffer_tokens <= self.seq_len or self.stream_val_tokens < 0:
            raise ConfigError(
                f"data.stream_buffer_tokens must be > data.seq_len ({self.seq_len}) and "
                f"data.stream_val_tokens >= 0, got {self.stream_buffer_tokens} and "
                f"{self.stream_val_tokens}"
            )
        choices = (
            ("suite", SUITES),
            ("suite_val", VAL_MODES),
            ("bin_dtype", BIN_DTYPES),
            ("raw_dtype", ("", *BIN_DTYPES)),
            ("windows", ("span", "documents")),
            ("format", ("text", "sft")),
            ("sft_layout", SFT_LAYOUTS),
        )
        for key, allowed in choices:
            if getattr(self, key) not in allowed:
                raise ConfigError(f"data.{key}={getattr(self, key)!r} is not one of {allowed}")
        if not 8 <= self.suite_vocab_size <= 1 << 16:
            raise ConfigError(
                f"data.suite_vocab_size must be in [8, 65536], got {self.suite_vocab_size}"
            )
        if self.suite_tokens_per_domain < 1024:
            raise ConfigError(
                f"data.suite_tokens_per_domain must be >= 1024, got {self.suite_tokens_per_domain}"
            )


@dataclass(frozen=True)
class TaskPGMConfig:
    """TaskPGM: single-task fine-tunes, probe divergences, energy on the simplex.

    The ``[taskpgm]`` table; see docs/methods.md, "TaskPGM: Defaults".
    """

    finetune_steps: int = 100  # optimizer steps of each single-task fine-tune (TaskPGM step 1)
    probe: str = ""  # probe set: a file or folder (empty: the corpus's validation/target data)
    probe_max_per_task: int = 64  # probe windows per probe stream (first non-overlapping ones)
    probe_batch_size: int = 16  # probe rows per forward of the N models (N * B * T * V logits)
    top_k: int = 0  # JSD over each pair's top-k tokens, renormalised (0: full vocabulary)
    affinity: str = "linear"  # linear: 1 - D/ln 2 | exp: exp(-D/sigma) | pmi: probe-loss PMI
    sigma: float = 0.0  # (exp) bandwidth; 0: the mean off-diagonal divergence
    utility: str = "group_gain"  # group_gain (gain per probe stream, >= 0) | gain | coverage | mix
    mix: float = 0.5  # (mix) weight of the gain part
    lam: float = 1.0  # redundancy strength lambda
    mu: float = 0.0  # ridge; 0: tandem_core.default_mu (the smallest safe one, at least lam)
    method: str = "active_set"  # active_set | pgd | mean_field
    tau_e: float = 0.1  # (mean_field) entropy temperature
    budget: int = 0  # k > 0: greedy subset of at most k tasks (TaskPGM step 5); 0: continuous
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


# keys of which one is given at most: a user's choice of one replaces a base run's other
EXCLUSIVE = (
    ("data", ("val_path", "val_fraction", "target_path")),
    ("data", ("path", "hf_dataset")),
)


def _drop_replaced_choices(tables: dict, given: set[tuple[str, str]]) -> None:
    """Where the user set one of ``EXCLUSIVE``'s keys, drop the others that came from a base."""
    for table, keys in EXCLUSIVE:
        chosen = {k for k in keys if (table, k) in given}
        if chosen:
            for key in set(keys) - chosen:
                tables.get(table, {}).pop(key, None)


@dataclass(frozen=True)
class JobConfig:
    """A whole job: the tables. ``backend`` is the run backend's ``Options`` (default: its own)."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    taskpgm: TaskPGMConfig = field(default_factory=TaskPGMConfig)
    backend: Any = None

    def __post_init__(self) -> None:
        m = self.model
        if m.kind == "tiny_gpt" and m.d_model % m.n_head:
            raise ConfigError(
                f"model.n_head={m.n_head} must divide model.d_model={m.d_model} "
                "(each attention head gets d_model / n_head dimensions)"
            )
        options = training_backend(self.run.backend).Options
        if self.backend is None:
            object.__setattr__(self, "backend", options())
        elif not isinstance(self.backend, options):
            raise ConfigError(
                f"[backend] holds {type(self.backend).__name__}; run.backend="
                f"{self.run.backend!r} takes {options.__name__}"
            )

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        overrides: list[str] = (),
        base: dict[str, dict[str, Any]] | None = None,
    ) -> JobConfig:
        """Read a TOML file (optional) and apply ``table.key=value`` overrides.

        ``base``: tables the file's keys, then the overrides, replace key by key (``tandem
        compare --mixture RUN``: that run's [data] and [model]).

        Raises:
            ConfigError: unreadable TOML, unknown table/key, wrong type, out-of-range value.
        """
        tables: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (base or {}).items()}
        given: set[tuple[str, str]] = set()  # (table, key) the file or the overrides set
        if path is not None:
            for name, values in _read_toml(Path(path)).items():
                tables.setdefault(name, {}).update(values)
                given |= {(name, key) for key in values}
        for item in overrides:
            table, key, value = parse_override(item)
            tables.setdefault(table, {})[key] = value
            given.add((table, key))
        _drop_replaced_choices(tables, given)
        return cls.from_mapping(tables)

    @classmethod
    def from_mapping(cls, tables: dict[str, dict[str, Any]]) -> JobConfig:
        """Build from ``{table: {key: value}}``, checking names and types."""
        sections = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(tables) - set(sections))
        if unknown:
            raise ConfigError(f"unknown table(s) {unknown}; known tables: {sorted(sections)}")
        for name, values in tables.items():
            if not isinstance(values, dict):
                raise ConfigError(f"[{name}] must be a table")
        built = {name: _section(name, kind, dict(tables.get(name, {}))) for name, kind in _SECTIONS}
        try:
            built["train"] = TrainConfig.from_mapping(dict(tables.get("train", {})))
        except ConfigError as err:
            raise ConfigError(f"[train] {err}") from err
        options = training_backend(built["run"].backend).Options
        built["backend"] = _section("backend", options, dict(tables.get("backend", {})))
        return cls(**built)

    def to_mapping(self) -> dict[str, dict[str, Any]]:
        """``{table: {key: value}}`` for config.toml (``None`` values left out)."""
        out = {name: dataclasses.asdict(getattr(self, name)) for name, _ in _SECTIONS}
        out["train"] = self.train.to_mapping()
        out["backend"] = dataclasses.asdict(self.backend)
        return {k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in out.items()}

    def replace(self, **tables: Any) -> JobConfig:
        """A copy with some tables' fields replaced: ``cfg.replace(train={"steps": 10})``.

        A new ``train.method`` drops the old method's keys; a new ``run.backend`` starts from the
        new backend's default options.
        """
        mapping = self.to_mapping()
        if tables.get("run", {}).get("backend", self.run.backend) != self.run.backend:
            mapping.pop("backend")
        for name, values in tables.items():
            if name == "train":
                mapping["train"] = self.train.replace(**values).to_mapping()
            else:
                mapping.setdefault(name, {}).update(values)
        return JobConfig.from_mapping(mapping)


def _read_toml(path: Path) -> dict[str, Any]:
    """The tables of a TOML config file; ``ConfigError`` names the file and the problem."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"--config {path}: cannot read it ({err.strerror or err})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8 (TOML files are UTF-8)") from None
    try:
        tables = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML ({err})") from None
    for name, values in tables.items():
        if not isinstance(values, dict):
            raise ConfigError(
                f"{path}: {name} = {values!r} must be a table ([{name}] with key = value lines)"
            )
    return tables


def check_run_dir(path: str | os.PathLike) -> None:
    """Fail early when ``run.run_dir`` cannot be a folder this process writes.

    Raises:
        NotADirectoryError: ``path`` or one of its parents is a file.
        PermissionError: the nearest existing folder is not writable.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "is a file, not a folder (run.run_dir)", str(path))
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR, f"is a file: run.run_dir={str(path)!r} cannot be under it", str(parent)
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "folder not writable (run.run_dir)", str(parent))


def check_against_data(cfg: JobConfig, corpus: Any, *, needs_val: bool) -> None:
    """The checks that need the data: run them after reading it and before any work or write.

    Args:
        cfg: the job.
        corpus: the ``DomainCorpus`` (M training domains, its validation domains).
        needs_val: the job reads validation data (the method's signal, or the report).

    Raises:
        ConfigError: no validation data where the job needs it; ``train.floor`` infeasible for
            M domains (``M * floor >= 1``).
    """
    m = len(corpus.domains)
    floor = getattr(cfg.train.params, "floor", 0.0)
    if isinstance(floor, (int, float)) and floor > 0 and m * floor >= 1:
        raise ConfigError(
            f"train.floor={floor} is infeasible for the data's M={m} domains (M * floor = "
            f"{m * floor:g} must be < 1); use train.floor < {1 / m:g}"
        )
    if needs_val and not corpus.val_domains:
        d = cfg.data
        source = f"data.path={d.path!r}" if d.path else f"data.hf_dataset={d.hf_dataset!r}"
        keys = "data.val_path (the same domains), data.target_path (a target set) or "
        raise ConfigError(
            f"{source} has no validation data, and this job measures the validation loss "
            f"(method={cfg.train.method!r}): set {keys if d.path else ''}data.val_fraction "
            "(e.g. 0.1)"
        )


_SECTIONS = (
    ("run", RunConfig),
    ("data", DataConfig),
    ("model", ModelSpec),
    ("taskpgm", TaskPGMConfig),
)


def _section(name: str, cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown and name == "backend":
        raise ConfigError(
            f"unknown key(s) {[f'backend.{k}' for k in unknown]} for run.backend's options "
            f"{cls.__name__}; known: {sorted(hints)}"
        )
    if unknown:
        raise ConfigError(
            f"unknown key(s) {[f'{name}.{k}' for k in unknown]}; known: {sorted(hints)}"
        )
    for key, value in values.items():
        want = hints[key]
        if want is list and isinstance(value, str):
            values[key] = value = [value]  # --set run.report_to=wandb
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
