"""The demo end to end: the demo SAE on MiniLM, harvested from WordNet glosses, labelled with minilm."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from labeler import cli
from labeler.harvest.config import HarvestConfig, SamplingConfig
from labeler.harvest.pipeline import harvest
from labeler.store.dataset import read_runs
from labeler.toys.demo_sae import DemoSAEConfig, build_demo

# A smaller demo SAE than the default (fewer tokens and steps), to keep the suite's time modest on CI;
# the code path is the default one.
SMALL = DemoSAEConfig(d_sae=256, train_tokens=6000, steps=150)


@pytest.mark.slow
def test_demo_sae_harvested_and_labelled(tmp_path: Path) -> None:
    messages: list[str] = []
    assets = build_demo(tmp_path / "cache", SMALL, log=messages.append)
    assert (assets.sae_dir / "cfg.json").exists() and messages
    assert build_demo(tmp_path / "cache", SMALL, log=messages.append) == assets  # cached: no second training
    assert len([m for m in messages if "training the demo SAE" in m]) == 1

    out = tmp_path / "harvest"
    manifest = harvest(
        HarvestConfig(
            sae=str(assets.sae_dir),
            model=str(assets.model_dir),
            corpus=str(assets.corpus),
            out=str(out),
            tokens=5000,
            features=tuple(range(8)),
            sampling=SamplingConfig(quantile_examples=20, inactive_examples=20),
            device="cpu",
        )
    )
    assert manifest.tokens == 5000 and manifest.hook_module == "encoder.layer.3 (output)"
    features = pq.read_table(out / "features.parquet").to_pylist()
    assert [f["feature"] for f in features] == list(range(8))
    status = cli.main(
        [
            "label",
            "--exemplars",
            str(out / "exemplars"),
            "--discriminator",
            "minilm",
            "--out",
            str(tmp_path / "labels"),
            "--steps",
            "15",
            "--restarts",
            "2",
        ]
    )
    assert status == 0
    labels = read_runs([str(tmp_path / "labels")]).labels.sort_by("feature").to_pylist()
    assert sorted(r["feature"] for r in labels) == [f["feature"] for f in features if f["status"] != "dead"]
    labelled = [r for r in labels if r["status"] == "labelled"]
    assert labelled and all(r["label"] and 0.0 <= r["heldout_auroc"] <= 1.0 for r in labelled)
