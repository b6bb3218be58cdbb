"""``tandem config``: the resolved configuration as TOML, each key with its default and help.

[train] shows the keys of ``train.method`` only (a comment names the other methods) and [backend]
the options of ``run.backend``; keys that are unset (``None``) appear as comments.
"""

from __future__ import annotations

import argparse
import dataclasses

from ._common import add_config_options


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand."""
    p = sub.add_parser(
        "config", help="print the resolved configuration: every key, its default and help"
    )
    add_config_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the TOML."""
    from ..config import JobConfig

    print(render(JobConfig.load(args.config, args.set)), end="")
    return 0


def render(cfg) -> str:
    """The TOML text of ``cfg`` (a ``JobConfig``) with ``# help (default X)`` comments."""
    from tandem_core.methods import all_methods
    from tandem_core.run import TrainConfig
    from tandem_core.run.weighting import AdaptConfig

    from ..config import JobConfig
    from ..config_help import field_help

    defaults = JobConfig.from_mapping({"run": {"backend": cfg.run.backend}}).to_mapping()
    defaults["train"] = TrainConfig.from_mapping({"method": cfg.train.method}).to_mapping()
    defaults["backend"] = dataclasses.asdict(type(cfg.backend)())
    values = cfg.to_mapping()
    helps = {name: field_help(type(getattr(cfg, name))) for name in values}
    helps["train"] = {
        **field_help(TrainConfig),
        **field_help(AdaptConfig),
        **field_help(type(cfg.train.params)),
    }
    keys = {name: [f.name for f in dataclasses.fields(getattr(cfg, name))] for name in values}
    keys["train"] = [k for k in keys["train"] if k not in ("params", "adapt")]
    keys["train"] += [f.name for f in dataclasses.fields(cfg.train.params)]
    keys["train"] += [f.name for f in dataclasses.fields(AdaptConfig)]
    out = []
    for name in values:
        out.append(f"[{name}]")
        if name == "train":
            others = sorted(m.name for m in all_methods() if m.name != cfg.train.method)
            out.append(f"# other methods (train.method, with their own keys): {', '.join(others)}")
        for key in keys[name]:
            line = _line(key, values[name].get(key), defaults[name].get(key), helps[name][key])
            out.append(line)
        out.append("")
    return "\n".join(out)


def _line(key: str, value, default, help: str) -> str:
    """``key = value  # help (default X)``; an unset key as a comment line."""
    shown = "unset" if default is None else _toml(default)
    comment = f"# {help} (default {shown})"
    if value is None:
        return f"# {key} = (unset)  {comment}"
    return f"{key} = {_toml(value)}  {comment}"


def _toml(value) -> str:
    import tomli_w

    return tomli_w.dumps({"v": value}).strip()[len("v = ") :]
