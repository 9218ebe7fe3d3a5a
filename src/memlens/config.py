"""Pipeline configuration: one section per stage, strict loading from YAML or JSON.

The keys of a section are exactly the options of that stage's CLI command, in snake_case (``--n-boot`` is
``n_boot``), so anything a config file can set a flag can set, with the same name. The schema is read from
the commands themselves, so the two cannot drift apart. Unknown sections or keys are errors (a typo must not
be silently ignored).

Example (YAML)::

    train:   {backbone: small, pretrain_epochs: 8, seed: 0}
    score:   {metrics: "mse,dssim,perceptual"}
    analyze: {n_boot: 1000}
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["STAGES", "PipelineConfig", "load_config", "stage_options"]

# Stage name -> CLI command name, in pipeline order.
STAGES: dict[str, str] = {
    "check": "check",
    "train": "train",
    "score": "score",
    "analyze": "analyze",
    "predictor": "fit-predictor",
    "explain": "explain",
    "baselines": "baselines",  # off unless baselines.models is set (memlens run --baselines resmem,vitmem)
    "report": "report",
}

# Positional/run-directory parameters set by the pipeline itself, never by a config file.
_RESERVED = {"data", "run", "run_dir", "out", "fmt", "resume", "out_dir"}


def stage_options(stage: str) -> dict[str, Any]:
    """Option name -> click parameter for one stage (positional and run-directory parameters excluded)."""
    import click

    from .cli import app

    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    ctx = click.Context(app)
    cmd = app.get_command(ctx, STAGES[stage])
    if cmd is None:  # pragma: no cover - every stage is part of the package
        raise ConfigError(f"stage {stage!r} is not available in this build")
    return {p.name: p for p in cmd.params
            if isinstance(p, click.Option) and p.name and p.name not in _RESERVED}


@dataclass(frozen=True)
class PipelineConfig:
    """Options per stage (``{stage: {option: value}}``), validated against the stage commands."""

    stages: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        clean: dict[str, dict[str, Any]] = {}
        for stage, options in dict(self.stages).items():
            if stage not in STAGES:
                problems.append(f"unknown section {stage!r} (sections: {', '.join(STAGES)})")
                continue
            if options is None:
                options = {}
            if not isinstance(options, Mapping):
                problems.append(f"section {stage!r} must be a mapping of option: value")
                continue
            known = stage_options(stage)
            for key in options:
                if key.replace("-", "_") not in known:
                    problems.append(f"{stage}.{key}: unknown option ("
                                    + (f"known: {', '.join(sorted(known))})" if known else f"{stage} takes none)"))
            clean[stage] = {k.replace("-", "_"): v for k, v in options.items()}
        if problems:
            raise ConfigError("\n".join(problems))
        object.__setattr__(self, "stages", clean)

    def get(self, stage: str) -> dict[str, Any]:
        return dict(self.stages.get(stage, {}))

    def merged(self, stage: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """This stage's options with ``overrides`` (e.g. CLI flags) taking precedence."""
        out = self.get(stage)
        out.update({k: v for k, v in overrides.items() if v is not None})
        return out

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self.stages.items()}


def builtin_configs() -> dict[str, Path]:
    """The configs shipped with memlens, by name (``bagheri2026``: the paper's setting)."""
    folder = Path(__file__).resolve().parent / "configs"
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def load_config(path: str | os.PathLike) -> PipelineConfig:
    """Read a YAML (``.yaml``/``.yml``) or JSON config file strictly (unknown keys raise ConfigError).

    ``path`` may also be the name of a config shipped with memlens (:func:`builtin_configs`, e.g.
    ``"bagheri2026"``) when no file of that name exists.
    """
    path = Path(path)
    builtin = builtin_configs()
    if not path.is_file() and str(path) in builtin:
        path = builtin[str(path)]
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (built-in configs: {', '.join(builtin) or 'none'})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'} "
                          f"({str(exc).splitlines()[0]})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of stage sections")
    try:
        return PipelineConfig(data)
    except ConfigError as exc:
        raise ConfigError("\n".join(f"{path}: {line}" for line in exc.lines())) from None
