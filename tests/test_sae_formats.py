"""SAE files as sparsify, sae-lens and Gemma Scope write them (labeler/harvest/sae_formats.py), harvested on a tiny
GPT-2, and the hook names of the model as the user loaded it (labeler/harvest/sae_source.py).

Every recorded activation is checked against the format's own encode (sparsify's SparseCoder, sae-lens's SAE)
recomputed from the row's window alone."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import WORDS, tiny_gpt2, word_tokenizer
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from transformers import GPT2Model

from labeler.harvest.config import HarvestConfig, SamplingConfig
from labeler.harvest.pipeline import harvest
from labeler.harvest.sae_formats import SAEFormatError, detect_format
from labeler.harvest.sae_source import SourceError, load_source

sparsify = pytest.importorskip("sparsify")  # the interop extra (Makefile install)

D_SAE = 48


@pytest.fixture(scope="module")
def subject(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 (2 layers, width 32) and a word tokenizer, saved as a Hugging Face folder."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gpt2")
    tokenizer = word_tokenizer()
    tiny_gpt2(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    words = [w for w in WORDS if w.isalpha()]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(" ".join(rng.choice(words, rng.integers(3, 30))) for _ in range(30)) + "\n")
    return path


def harvested(tmp_path: Path, subject: Path, corpus: Path, sae: Path, name: str, **overrides: object) -> list[dict]:
    settings: dict[str, object] = dict(
        sae=str(sae), model=str(subject), corpus=str(corpus), out=str(tmp_path / name), context_len=16, batch_size=4
    )
    harvest(HarvestConfig(**(settings | overrides)))  # type: ignore[arg-type]
    rows = pq.read_table(tmp_path / name / "exemplars").to_pylist()
    assert rows and any(r["activation"] > 0 for r in rows)
    return rows


def module_output(subject: Path, module: str, ids: list[int]) -> torch.Tensor:
    """Float[token d]: the output of `module` of the base GPT-2 on one window, by a plain forward hook."""
    model = GPT2Model.from_pretrained(subject).eval()
    captured: list[torch.Tensor] = []
    handle = model.get_submodule(module).register_forward_hook(lambda _m, _a, out: captured.append(out))
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    handle.remove()
    out = captured[0]
    return (out[0] if isinstance(out, tuple) else out)[0]


def check_rows(rows: list[dict], subject: Path, module: str, encode: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Each row's activation is `encode` of the hook's activations over its own window, at its position."""
    by_window: dict[int, np.ndarray] = {}
    for row in rows:
        if row["window"] not in by_window:
            with torch.no_grad():
                by_window[row["window"]] = encode(module_output(subject, module, row["window_ids"])).numpy()
        expected = by_window[row["window"]][row["position"], row["feature"]]
        assert abs(row["activation"] - expected) <= 1e-4, row


def sparsify_dense(coder: object) -> Callable[[torch.Tensor], torch.Tensor]:
    """sparsify's own encode (top_acts, top_indices) scattered into Float[token d_sae]."""

    def encode(x: torch.Tensor) -> torch.Tensor:
        out = coder.encode(x)  # type: ignore[attr-defined]
        return torch.zeros(x.shape[0], D_SAE).scatter_(-1, out.top_indices, out.top_acts)

    return encode


@pytest.mark.parametrize(
    ("hookpoint", "activation"), [("h.0", "topk"), ("h.0.mlp", "topk"), ("h.1", "groupmax")], ids=str
)
def test_sparsify_sae_from_its_own_save_to_disk(
    tmp_path: Path, subject: Path, corpus: Path, hookpoint: str, activation: str
) -> None:
    """A SparseCoder saved by sparsify itself: the hookpoint comes from the folder's name (`h.0.mlp` is the MLP's
    output, not resid_post), and every activation equals sparsify's encode of that module's output."""
    torch.manual_seed(2)
    coder = sparsify.SparseCoder(32, sparsify.SparseCoderConfig(num_latents=D_SAE, k=6, activation=activation))
    with torch.no_grad():
        coder.encoder.bias.normal_(0, 0.05)
        coder.b_dec.normal_(0, 0.1)  # sparsify subtracts b_dec from the input: a test that it is done
    coder.save_to_disk(tmp_path / "checkpoint" / hookpoint)
    folder = tmp_path / "checkpoint" / hookpoint
    assert detect_format(str(folder)) == "sparsify"
    sampling = SamplingConfig(top_examples=4, quantile_examples=4)
    rows = harvested(tmp_path, subject, corpus, folder, "out", sampling=sampling)
    manifest = (tmp_path / "out" / "manifest.json").read_text()
    assert f'"hook_module": "{hookpoint} (output)"' in manifest
    check_rows(rows, subject, hookpoint, sparsify_dense(coder))

    with pytest.raises(SourceError, match=rf"sparsify SAEs by hookpoint \['{re.escape(hookpoint)}'\]"):
        load_source(str(tmp_path / "checkpoint"), str(subject), "cpu")


def test_gemma_scope_params_npz(tmp_path: Path, subject: Path, corpus: Path) -> None:
    """A params.npz with Gemma Scope's published keys, under its release's folder layout: the hook is block 0's
    resid_post, and every activation equals sae-lens's JumpReLU SAE holding the same weights (loaded as sae-lens
    loads Gemma Scope: no b_dec taken from the input)."""
    rng = np.random.default_rng(3)
    params = {
        "W_enc": rng.normal(0, 0.3, (32, D_SAE)).astype(np.float32),
        "b_enc": rng.normal(0, 0.05, D_SAE).astype(np.float32),
        "threshold": rng.uniform(0.0, 0.4, D_SAE).astype(np.float32),
        "W_dec": rng.normal(0, 0.3, (D_SAE, 32)).astype(np.float32),
        "b_dec": rng.normal(0, 0.1, 32).astype(np.float32),
    }
    folder = tmp_path / "gemma-scope-2b-pt-res" / "layer_0" / "width_16k" / "average_l0_5"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **params)
    assert detect_format(str(folder)) == detect_format(str(folder / "params.npz")) == "gemma-scope"
    reference = JumpReLUSAE(JumpReLUSAEConfig(d_in=32, d_sae=D_SAE, apply_b_dec_to_input=False))
    reference.load_state_dict({k: torch.as_tensor(v) for k, v in params.items()})
    rows = harvested(tmp_path, subject, corpus, folder, "out")
    check_rows(rows, subject, "h.0", reference.encode)

    # Outside the release's layout the file names no hook: --hook gives it, and the same rows come out.
    plain = tmp_path / "plain"
    plain.mkdir()
    np.savez(plain / "params.npz", **params)
    with pytest.raises(SourceError, match=r"names no hook .*give one with --hook"):
        load_source(str(plain), str(subject), "cpu")
    assert harvested(tmp_path, subject, corpus, plain, "plain-out", hook="transformer.h.0") == rows


def lens_sae(folder: Path, hook: str) -> Path:
    torch.manual_seed(1)
    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=D_SAE, metadata=SAEMetadata(hook_name=hook)))
    with torch.no_grad():
        sae.b_enc.fill_(-0.02)
    sae.save_model(folder)
    return folder


def test_a_sae_lens_hook_of_the_causal_lm_gives_the_same_exemplars(tmp_path: Path, subject: Path, corpus: Path) -> None:
    """The same sae-lens SAE saved with hook `transformer.h.0` (GPT2LMHeadModel's module path) and with
    `blocks.0.hook_resid_post`: the same exemplar rows, each equal to sae-lens's own encode."""
    causal = lens_sae(tmp_path / "causal", "transformer.h.0")
    blocks = lens_sae(tmp_path / "blocks", "blocks.0.hook_resid_post")
    assert detect_format(str(causal)) == "sae-lens"
    rows = harvested(tmp_path, subject, corpus, causal, "a")
    assert rows == harvested(tmp_path, subject, corpus, blocks, "b")
    check_rows(rows, subject, "h.0", StandardSAE.load_from_disk(str(causal)).encode)


def test_sae_format_names_the_format(tmp_path: Path, subject: Path, corpus: Path) -> None:
    """--sae-format overrides detection; a folder read as the wrong format is refused with what it lacks."""
    folder = lens_sae(tmp_path / "lens", "blocks.0.hook_resid_post")
    with pytest.raises(SourceError, match=r"needs cfg\.json and sae\.safetensors"):
        load_source(str(folder), str(subject), "cpu", sae_format="sparsify")
    with pytest.raises(SourceError, match=r"cannot tell the format"):
        empty = tmp_path / "empty"
        empty.mkdir()
        load_source(str(empty), str(subject), "cpu")
    with pytest.raises(ValueError, match="sae_format must be"):
        HarvestConfig(sae="", model="", corpus="", out="", sae_format="npz")  # type: ignore[arg-type]
    with pytest.raises(SAEFormatError):
        detect_format(str(tmp_path / "missing"))


def test_cli_harvest_sae_format(tmp_path: Path, subject: Path, corpus: Path) -> None:
    from labeler import cli

    coder = sparsify.SparseCoder(32, sparsify.SparseCoderConfig(num_latents=D_SAE, k=6))
    coder.save_to_disk(tmp_path / "h.0")
    common = ["harvest", "--sae", str(tmp_path / "h.0"), "--model", str(subject), "--corpus", str(corpus)]
    assert cli.main([*common, "--out", str(tmp_path / "a"), "--sae-format", "sparsify", "--context-len", "16"]) == 0
    assert pq.read_table(tmp_path / "a" / "features.parquet").num_rows == D_SAE
    assert cli.main([*common, "--out", str(tmp_path / "b"), "--sae-format", "gemma-scope"]) == 2


def test_a_gemma_scope_npz_holding_a_pickled_array_is_named_and_nothing_is_written(
    tmp_path: Path, subject: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """numpy refuses to unpickle an object array; `labeler harvest` names the file and the array and says how to
    save it as numbers, exit 2, before any output is written."""
    from labeler import cli

    folder = tmp_path / "gemma-scope-2b-pt-res" / "layer_0" / "width_16k" / "average_l0_5"
    folder.mkdir(parents=True)
    weights = np.empty((32, D_SAE), dtype=object)
    weights[:] = 0.5
    np.savez(folder / "params.npz", W_enc=weights, b_enc=np.zeros(D_SAE), threshold=np.zeros(D_SAE))
    out = tmp_path / "out"
    argv = ["harvest", "--sae", str(folder), "--model", str(subject), "--corpus", str(corpus), "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{folder / 'params.npz'}: array 'W_enc' is a pickled object array, not numbers" in err, err
    assert "labeler never unpickles a file" in err and "np.savez(" in err
    assert not out.exists()
