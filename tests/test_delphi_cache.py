"""labeler/harvest/delphi_cache.py: a cache written by delphi's own LatentCache, imported, then labelled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import WORDS, tiny_gpt2, word_tokenizer
from import_runs import label_import
from safetensors.numpy import load_file, save_file

from labeler.cli import main
from labeler.harvest.delphi_cache import DelphiImportConfig, import_delphi_cache
from labeler.harvest.exemplar_parts import ImportSourceError

delphi_cache = pytest.importorskip("delphi.latents.cache", reason="eai-delphi (the interop extra) is not installed")

HOOK = "transformer.h.0"
WINDOWS, CONTEXT = 12, 16
LATENTS = 6
DEAD = 5


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A delphi run folder: latents/transformer.h.0/{0_2,3_5}.safetensors from LatentCache on a tiny GPT-2, and the
    tokenizer under tokenizer/. Latent 5 never fires (zero weights, negative bias)."""
    tokenizer = word_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    model = tiny_gpt2(len(tokenizer))
    text = " ".join(np.random.default_rng(0).choice(WORDS, WINDOWS * CONTEXT))
    tokens = torch.tensor(tokenizer(text)["input_ids"][: WINDOWS * CONTEXT]).view(WINDOWS, CONTEXT)
    weight, bias = torch.randn(32, LATENTS), torch.zeros(LATENTS)
    weight[:, DEAD], bias[DEAD] = 0.0, -1.0
    latent_cache = delphi_cache.LatentCache(model, {HOOK: lambda x: torch.relu(x @ weight + bias)}, batch_size=4)
    latent_cache.run(tokens.numel(), tokens)
    latent_cache.save_splits(n_splits=2, save_dir=tmp_path / "latents")
    return tmp_path


@pytest.mark.slow
def test_imported_rows_are_the_caches_own_values_and_the_run_labels_them(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "imported"
    args = ["import", "delphi-cache", str(cache), "--model", str(cache / "tokenizer"), "--out", str(out)]
    assert main([*args, "--top-examples", "3", "--quantile-examples", "4", "--inactive-examples", "5"]) == 0
    tokenizer = word_tokenizer()
    cached: dict[tuple[int, int, int], float] = {}
    tokens = None
    for path in sorted((cache / "latents" / HOOK).iterdir()):
        start = int(path.stem.split("_")[0])
        arrays = load_file(str(path))
        tokens = arrays["tokens"]
        for (seq, pos, latent), value in zip(arrays["locations"].tolist(), arrays["activations"].tolist(), strict=True):
            cached[seq, pos, start + latent] = value
    assert tokens is not None
    rows = pq.read_table(out / "exemplars").to_pylist()
    assert {r["feature"] for r in rows} == set(range(LATENTS)) - {DEAD}
    for row in rows:
        window, position = row["window"], row["position"]
        assert row["window_ids"] == tokens[window].tolist()
        assert row["target_id"] == tokens[window, position]
        assert row["activation"] == cached.get((window, position, row["feature"]), 0.0)
        assert row["target"] == tokenizer.decode([row["target_id"]]).strip()
        assert row["context"] == tokenizer.decode(tokens[window].tolist(), skip_special_tokens=True)
        assert (row["activation"] > 0) == (row["sampling"] != "inactive")
    for feature in set(range(LATENTS)) - {DEAD}:
        own = sorted((v for (_, _, f), v in cached.items() if f == feature), reverse=True)
        top = [r["activation"] for r in rows if r["feature"] == feature and r["sampling"] == "top"]
        assert top == own[:3]  # the exact top examples, best first
    features = {r["feature"]: r for r in pq.read_table(out / "features.parquet").to_pylist()}
    assert features[DEAD]["status"] == "dead" and features[DEAD]["active_tokens"] == 0
    for feature in range(LATENTS):
        active = sum(1 for (_, _, f) in cached if f == feature)
        assert features[feature]["active_tokens"] == active
        assert features[feature]["frequency"] == pytest.approx(active / (WINDOWS * CONTEXT))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["hook"] == HOOK and manifest["tokens"] == WINDOWS * CONTEXT and manifest["dead"] == 1

    labels = label_import(out, tmp_path / "run")
    assert labels[DEAD]["status"] == "dead"
    for feature in set(range(LATENTS)) - {DEAD}:
        assert labels[feature]["status"] == "labelled" and labels[feature]["label"]
        assert labels[feature]["activation_frequency"] == pytest.approx(features[feature]["frequency"])


def test_bad_input_is_refused_with_a_reason(cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def refused(source: Path, model: Path) -> str:
        config = DelphiImportConfig(cache=str(source), model=str(model), out=str(tmp_path / f"o{len(seen)}"))
        seen.append(source)
        with pytest.raises(ImportSourceError) as err:
            import_delphi_cache(config)
        return str(err.value)

    seen: list[Path] = []
    tokenizer = cache / "tokenizer"
    assert "not found" in refused(tmp_path / "nowhere", tokenizer)
    assert "latents/<hook>/<start>_<end>.safetensors" in refused(tokenizer, tokenizer)
    small = word_tokenizer(extra_words=["dog"])  # far fewer tokens than the cache's ids
    small.save_pretrained(tmp_path / "small")
    message = refused(cache, tmp_path / "small")
    assert f"has {len(small)} tokens" in message and "the tokenizer the cache was made with" in message
    split = cache / "latents" / HOOK / "0_2.safetensors"
    arrays = load_file(str(split))
    save_file({k: v for k, v in arrays.items() if k != "tokens"}, str(split))
    assert "save_tokens=False" in refused(cache, tokenizer)
    code = main(["import", "delphi-cache", str(tmp_path / "nowhere"), "--model", str(tokenizer), "--out", "x"])
    assert code == 2 and "delphi cache folder not found" in capsys.readouterr().err
