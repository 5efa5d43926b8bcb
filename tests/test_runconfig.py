"""The run config: YAML and TOML files, overrides, clear errors, and a round trip through the manifest."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from labeler.discriminators.causal_lm import CausalLMConfig
from labeler.discriminators.embedding import EmbeddingConfig
from labeler.discriminators.prompt import PromptTemplate
from labeler.optimise.config import OptimiserConfig
from labeler.optimise.labelling import LabelConfig
from labeler.run.config import ConfigError, RunConfig
from labeler.run.loading import build, describe, load_config, parse_override, to_dict


def test_yaml_and_toml_fill_nested_stages_and_overrides_win(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text(
        "out: s3://bucket/run1\nsource: {exemplars: /data/ex}\nlabel: {optimiser: {restarts: 8}}\n"
        "workers: {count: 4, num_gpus: 0.25}\nsink: {storage_options: {endpoint_url: 'http://127.0.0.1:5000'}}\n"
    )
    config = load_config(tmp_path / "run.yaml", {"workers.count": 2})
    assert config.out == "s3://bucket/run1" and config.source.exemplars == "/data/ex"
    assert config.label.optimiser.restarts == 8 and config.label.optimiser.max_steps == 100
    assert config.workers.count == 2 and config.workers.num_gpus == 0.25
    assert config.sink.storage_options == {"endpoint_url": "http://127.0.0.1:5000"}
    (tmp_path / "run.toml").write_text('discriminator = "minilm"\n[scheduler]\nfeatures_per_chunk = 128\n')
    assert load_config(tmp_path / "run.toml").scheduler.features_per_chunk == 128
    assert load_config(None) == RunConfig(label=LabelConfig(optimiser=EmbeddingConfig.default_optimiser))


def test_the_optimiser_defaults_follow_the_discriminator_kind() -> None:
    """Encoders default to straight-through without the entropy term; a causal LM to discrete search with its
    prior's swaps and the wider pick; what a config sets wins either way."""
    for spec in ("minilm", "embedding:/models/e5"):
        optimiser = load_config(None, {"discriminator": spec}).label.optimiser
        assert optimiser.straight_through and optimiser.c_entropy == 0.0
    hf = load_config(None, {"discriminator": "hf:/m"}).label.optimiser
    assert hf == CausalLMConfig.default_optimiser and hf.search == "discrete"
    paper = {"search": "gradient", "prior_candidates": 0, "rescore_prior": 0, "rescore_neighbours": 0}
    overrides = {"discriminator": "hf:/m"} | {f"label.optimiser.{key}": value for key, value in paper.items()}
    assert load_config(None, overrides).label.optimiser == OptimiserConfig()
    mine = load_config(None, {"label.optimiser.c_entropy": 0.3, "label.optimiser.straight_through": False})
    assert (mine.discriminator.kind, mine.label.optimiser.c_entropy, mine.label.optimiser.straight_through) == (
        "minilm",
        0.3,
        False,
    )


def test_manifest_round_trip_gives_the_same_config() -> None:
    config = load_config(None, {"label.optimiser.betas": [0.8, 0.9], "discriminator": "hf:/m"})
    config = load_config(None, {"discriminator": "hf:/m", "discriminator.template.system": "S"})
    assert config.discriminator == CausalLMConfig(model="/m", template=replace(PromptTemplate(), system="S"))
    assert build(RunConfig, to_dict(config), "") == config
    words = load_config(None, {"discriminator.vocab.words": "category-nouns"})
    assert "animal" in (words.discriminator.vocab.words or ()) and build(RunConfig, to_dict(words), "") == words


def test_a_discriminator_is_a_short_spec_or_its_kind_with_fields() -> None:
    """The spec replaces the whole section and its fields then change it, whatever order they are given in."""
    assert load_config(None, {"discriminator": "embedding:/e"}).discriminator == EmbeddingConfig(model="/e")
    config = load_config(None, {"discriminator.readout": "logit_diff", "discriminator": "hf:/m"})
    assert config.discriminator == CausalLMConfig(model="/m", readout="logit_diff")
    full = {"discriminator": {"kind": "hf", "model": "/m", "chat": "never"}}
    assert load_config(None, full).discriminator == CausalLMConfig(model="/m", chat="never")
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['discriminator.readout'\]"):
        load_config(None, {"discriminator": "minilm", "discriminator.readout": "logit_diff"})
    with pytest.raises(ConfigError, match=r"discriminator.kind must be one of \['hf', 'embedding', 'minilm'\]"):
        load_config(None, {"discriminator": {"kind": "gpt"}})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"workers.cuont": 2}, r"unknown setting\(s\) \['workers.cuont'\]; workers accepts"),
        ({"label.restarts": 2}, r"\['label.restarts'\]; label accepts .*; restarts belongs under label.optimiser$"),
        ({"workers.count": "two"}, "workers.count must be int"),
        ({"workers.count": 0}, "workers.count must be at least 1"),
        ({"engine": "fast"}, r"engine must be one of \['optimise', 'noop'\]"),
        ({"scheduler.max_attempts": 0}, "scheduler.max_attempts must be at least 1"),
        ({"label": 3}, "label must be a mapping"),
        ({"label.optimiser.lr": "nan"}, r"label.optimiser.lr must be a number, got 'nan'"),
        ({"label.optimiser.lr": float("nan")}, "label.optimiser: lr must be a finite number, got nan"),
        ({"label.optimiser.c_kl": float("inf")}, "label.optimiser: c_kl must be a finite number, got inf"),
        ({"label.active_threshold": float("nan")}, "label: active_threshold must be a finite number, got nan"),
    ],
)
def test_bad_settings_are_named(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_unreadable_files_and_bad_overrides(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping of settings at the top level"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="--set takes KEY=VALUE"):
        parse_override("workers.count")
    assert parse_override("workers.num_gpus=0.5") == ("workers.num_gpus", 0.5)


def test_every_setting_is_described() -> None:
    lines = describe()
    assert any(line.startswith("workers.num_gpus: 0.0  # GPUs per worker") for line in lines)
    assert any(line.startswith("source.exemplars: null  # fsspec URL") for line in lines)
    described = dict(line.split("  # ", 1) for line in lines)
    assert all(text.strip() for text in described.values()), [key for key, text in described.items() if not text]
    # a docstring of several lines is given whole, not cut after its first line
    assert described["source.features: null"].endswith("without it, the distinct ids in the exemplars.")


def test_an_unknown_discriminator_is_refused_before_the_run_starts() -> None:
    with pytest.raises(ConfigError, match=r"unknown discriminator 'bogus'; use hf:MODEL_DIR"):
        load_config(None, {"discriminator": "bogus"})
    with pytest.raises(ConfigError, match=r"unknown discriminator 'hf:'"):
        load_config(None, {"discriminator": "hf:"})
    assert load_config(None, {"discriminator": "hf:/models/x"}).discriminator.model == "/models/x"  # loaded by workers


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"source": {"storage_options": {"key": "AKIA"}}}, "source.storage_options.key"),
        ({"sink": {"storage_options": {"secret": "s"}}}, "sink.storage_options.secret"),
        ({"sink": {"storage_options": {"token": "t"}}}, "sink.storage_options.token"),
        ({"sink": {"storage_options": {"AWS_Secret_Access_Key": "s"}}}, "sink.storage_options.AWS_Secret_Access_Key"),
        ({"sink": {"storage_options": {"password": "p"}}}, "sink.storage_options.password"),
        (
            {"source": {"storage_options": {"client_kwargs": {"aws_session_token": "t"}}}},
            "source.storage_options.client_kwargs.aws_session_token",
        ),
        ({"sink": {"storage_options": {"sessionToken": "t"}}}, "sink.storage_options.sessionToken"),
        ({"harvest": {"corpus": "c.txt", "storage_options": {"key": "k"}}}, "harvest.storage_options.key"),
    ],
)
def test_credentials_in_storage_options_are_refused(options: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build(RunConfig, options, "")
    message = str(caught.value)
    assert f"{named}: credentials are refused in a run config" in message
    assert "AWS_ACCESS_KEY_ID" in message and "IRSA" in message
    assert "AKIA" not in message  # the value is never echoed


def test_non_secret_storage_options_pass() -> None:
    options = {"endpoint_url": "http://127.0.0.1:9000", "anon": False, "client_kwargs": {"region_name": "eu-west-1"}}
    assert build(RunConfig, {"sink": {"storage_options": options}}, "").sink.storage_options == options


def test_a_config_with_a_secret_writes_no_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from labeler.cli import main

    out = tmp_path / "run"
    (tmp_path / "run.yaml").write_text(
        f"out: {out}\nsink: {{storage_options: {{endpoint_url: 'http://127.0.0.1:9', key: AKIAEXAMPLE, "
        "secret: wJalrEXAMPLE}}\n"
    )
    assert main(["run", "--config", str(tmp_path / "run.yaml")]) == 2
    err = capsys.readouterr().err
    assert "labeler: error:" in err and "sink.storage_options.key: credentials are refused" in err
    assert "AWS_SECRET_ACCESS_KEY" in err and "AKIAEXAMPLE" not in err and "wJalrEXAMPLE" not in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run.yaml"]
