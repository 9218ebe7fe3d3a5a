"""Config files and `memlens run` option plumbing: strict keys, flag/config equivalence."""

from __future__ import annotations

import json

import click
import pytest

from memlens.commands._pipeline import STAGE_LIST, options_to_args
from memlens.config import STAGES, PipelineConfig, load_config, stage_options
from memlens.errors import ConfigError


def test_every_pipeline_stage_has_a_config_section():
    assert [s.name for s in STAGE_LIST] == list(STAGES)
    with_options = [stage for stage in STAGES if stage_options(stage)]
    # report's only option is its output path, which the pipeline sets itself
    assert with_options == [s for s in STAGES if s != "report"]
    assert "n_boot" in stage_options("analyze") and "backbone" in stage_options("train")


def test_unknown_section_and_key_are_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("analyze:\n  n_boot: 10\n  n_bots: 5\ntrainn:\n  seed: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    lines = err.value.lines()
    assert any("analyze.n_bots: unknown option" in line for line in lines)
    assert any("unknown section 'trainn'" in line for line in lines)
    assert all(line.startswith(str(path)) for line in lines)


def test_yaml_and_json_load_the_same(tmp_path):
    opts = {"analyze": {"n_boot": 50, "seed": 3}, "score": {"batch_size": 8}}
    (tmp_path / "c.json").write_text(json.dumps(opts))
    (tmp_path / "c.yaml").write_text("analyze: {n_boot: 50, seed: 3}\nscore: {batch-size: 8}\n")
    assert load_config(tmp_path / "c.json").to_dict() == load_config(tmp_path / "c.yaml").to_dict() == opts


@pytest.mark.parametrize("text", ["[1, 2]", "analyze: [1]", "a: b: c"])
def test_malformed_config(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_options_translate_to_the_same_parse_as_flags():
    """A config value goes through the command's own parser: the parsed parameters equal those of flags."""
    from memlens.cli import app

    cmd = app.get_command(click.Context(app), "analyze")
    args = ["RUN"] + options_to_args(cmd, {"n_boot": 123, "seed": 7, "method": "pearson"})
    ctx = cmd.make_context("analyze", args)
    by_flags = cmd.make_context("analyze", ["RUN", "--n-boot", "123", "--seed", "7", "--method", "pearson"])
    assert ctx.params == by_flags.params
    assert ctx.params["n_boot"] == 123 and ctx.params["method"] == "pearson"


def test_options_to_args_rejects_unknown_option():
    from memlens.cli import app

    cmd = app.get_command(click.Context(app), "analyze")
    with pytest.raises(click.UsageError, match="unknown option"):
        options_to_args(cmd, {"n_bootstrap": 3})


def test_pipeline_config_normalises_dashes():
    cfg = PipelineConfig({"analyze": {"n-boot": 5}})
    assert cfg.get("analyze") == {"n_boot": 5}
    assert cfg.merged("analyze", {"n_boot": 9, "seed": None}) == {"n_boot": 9}


def test_run_flags_map_onto_stage_options(tmp_path):
    """A shared flag sets every stage that has the option; clashing names get stage-prefixed flags."""
    from memlens.commands.run import SHARED, build_stage_options

    assert set(SHARED["seed"][1]) >= {"train", "analyze", "predictor", "explain"}
    assert SHARED["check_split"][1:] == (["check", "train"], "split")  # train loads what check validated
    assert "train_split" not in SHARED and SHARED["score_variant"][1] == ["check", "train"]
    assert SHARED["predictor_split"][1:] == (["predictor"], "split")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("analyze: {n_boot: 10, seed: 1}\n")
    opts = build_stage_options(cfg, ("analyze.n_boot=20",), {"seed": 5, "predictor_split": "paper",
                                                             "n_boot": None})
    assert opts["analyze"] == {"n_boot": "20", "seed": 5}  # flag > --set > config file
    assert opts["predictor"]["split"] == "paper" and "split" not in opts.get("check", {})
    assert opts["train"]["seed"] == 5
    # a config file's check.split reaches train too; a different train.split is refused
    cfg.write_text("check: {split: [train_1]}\n")
    assert build_stage_options(cfg, (), {})["train"]["split"] == ["train_1"]
    with pytest.raises(click.UsageError, match="check.split .* and train.split .* differ"):
        build_stage_options(cfg, ("train.split=val_1",), {})


def test_set_gives_flags_as_text_and_they_mean_what_they_say():
    """--set train.freeze_encoder=false must not turn the flag on (the text 'false' is truthy)."""
    from memlens.commands._pipeline import _command, options_to_args
    from memlens.commands.run import build_stage_options

    opts = build_stage_options(None, ("train.freeze_encoder=false", "analyze.no_groups=false",
                                      "explain.sanity_max=2"), {})
    assert options_to_args(_command("train"), opts["train"]) == ["--train-encoder"]
    assert options_to_args(_command("analyze"), opts["analyze"]) == []
    opts = build_stage_options(None, ("train.freeze_encoder=yes", "analyze.no_groups=1"), {})
    assert options_to_args(_command("train"), opts["train"]) == ["--freeze-encoder"]
    assert options_to_args(_command("analyze"), opts["analyze"]) == ["--no-groups"]
    with pytest.raises(click.UsageError, match="expected true or false"):
        options_to_args(_command("analyze"), {"no_groups": "maybe"})
