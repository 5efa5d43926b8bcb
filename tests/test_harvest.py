"""Harvesting on a tiny GPT-2 and a random sae-lens SAE, checked against a brute-force pass."""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import WORDS, tiny_gpt2, word_tokenizer
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Model, PreTrainedTokenizerFast

from labeler.harvest.config import HarvestConfig, SamplingConfig
from labeler.harvest.corpus import iter_documents, iter_windows
from labeler.harvest.pipeline import harvest
from labeler.harvest.sae_source import SourceError, load_source
from labeler.records.exemplars import read_exemplars
from labeler.records.schema import EXEMPLAR_ROW_SCHEMA, FEATURE_SCHEMA

D_SAE = 48
DEAD = (3, 17)
RARE = 5
DENSE = 9
ENGLISH = ("the", "cat", "sat", "on", "mat", "with", "a", "big", "dog", "near", "red", "house", "today")
HANZI = "我们今天在北京吃饭天气很好他说中文东京日本"


@pytest.fixture(scope="module")
def subject(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 (2 layers, width 32) and a word tokenizer, saved as a Hugging Face folder."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gpt2")
    tokenizer = word_tokenizer()
    tiny_gpt2(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_sae(folder: Path, d_in: int = 32, hook: str = "blocks.0.hook_resid_post") -> Path:
    torch.manual_seed(1)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=D_SAE, metadata=SAEMetadata(hook_name=hook)))
    with torch.no_grad():
        sae.b_enc.fill_(-0.02)  # pre-activations have a spread of about 0.04 here
        sae.b_enc[list(DEAD)] = -1e4  # never active
        sae.b_enc[RARE] = -0.11
        sae.b_enc[DENSE] = 0.03  # active on most tokens: its inactive sample takes the whole-batch path
    sae.save_model(folder)
    return folder


@pytest.fixture(scope="module")
def sae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sae(tmp_path_factory.mktemp("sae"))


def write_corpus(path: Path, lines: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    words = [w for w in WORDS if w.isalpha()]
    path.write_text("\n".join(" ".join(rng.choices(words, k=rng.randint(3, 30))) for _ in range(lines)) + "\n")
    return path


def config(tmp_path: Path, subject: Path, sae: Path, corpus: Path, **overrides: object) -> HarvestConfig:
    settings: dict[str, object] = dict(
        sae=str(sae), model=str(subject), corpus=str(corpus), out=str(tmp_path / "out"), context_len=16, batch_size=4
    )
    settings.update(overrides)
    return HarvestConfig(**settings)  # type: ignore[arg-type]


def brute_force(cfg: HarvestConfig) -> tuple[np.ndarray, np.ndarray]:
    """Latents of every window by a plain full forward (hidden_states[1] is block 0's output): Float[window token
    feature], and the valid mask."""
    source = load_source(cfg.sae, cfg.model, "cpu")
    model = GPT2Model.from_pretrained(cfg.model).eval()
    documents = iter_documents(cfg.corpus)
    batches = list(iter_windows(documents, source.tokenizer, cfg.context_len, 1000, cfg.tokens))
    ids = np.concatenate([b.ids for b in batches])
    valid = np.concatenate([b.valid for b in batches])
    attention = np.concatenate([b.attention for b in batches])
    with torch.no_grad():
        hidden = model(
            input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(attention).long(), output_hidden_states=True
        ).hidden_states[1]
        latents = source.sae.encode(hidden).numpy()
    return latents, valid


def test_harvest_matches_brute_force(tmp_path: Path, subject: Path, sae: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt", 60)
    cfg = config(tmp_path, subject, sae, corpus, sampling=SamplingConfig(top_examples=5), features_per_part=20)
    manifest = harvest(cfg)
    latents, valid = brute_force(cfg)
    acts = latents[valid]  # Float[token feature]
    assert manifest.tokens == valid.sum() and manifest.d_sae == D_SAE and manifest.parts == 3

    features = pq.read_table(tmp_path / "out" / "features.parquet")
    assert features.schema.equals(FEATURE_SCHEMA)
    rows = features.to_pylist()
    assert [r["feature"] for r in rows] == list(range(D_SAE))
    active = (acts > 0).sum(0)
    np.testing.assert_array_equal([r["active_tokens"] for r in rows], active)
    np.testing.assert_allclose([r["frequency"] for r in rows], active / len(acts))
    np.testing.assert_allclose([r["max_activation"] for r in rows], acts.max(0).clip(min=0), rtol=1e-5, atol=1e-6)
    assert {r["feature"] for r in rows if r["status"] == "dead"} == set(DEAD)
    assert 0 < rows[RARE]["active_tokens"] < 10 and rows[RARE]["status"] == "ultra_rare"

    exemplars = pq.read_table(tmp_path / "out" / "exemplars")
    assert exemplars.schema.equals(EXEMPLAR_ROW_SCHEMA)
    read_exemplars(tmp_path / "out" / "exemplars")  # the exemplar contract holds
    table = exemplars.to_pylist()
    flat_index = np.flatnonzero(valid.ravel())  # token -> window * context_len + position
    for feature in range(D_SAE):
        # The same word right after BOS has the same activation in every window: ties are real, so the top
        # examples are checked as the five largest values, each at a token that really has that value.
        expected = np.sort(acts[:, feature][acts[:, feature] > 0])[::-1][:5]
        top = [r for r in table if r["feature"] == feature and r["sampling"] == "top"]
        np.testing.assert_allclose([r["activation"] for r in top], expected, rtol=1e-5, err_msg=str(feature))
        assert len({(r["window"], r["position"]) for r in top}) == len(top)
        for r in top:
            assert r["window"] * 16 + r["position"] in flat_index
            assert latents[r["window"], r["position"], feature] == pytest.approx(r["activation"], rel=1e-5)
    for row in table[:: max(1, len(table) // 200)]:  # every kind of row points at its real token and activation
        assert row["activation"] == pytest.approx(
            float(latents[row["window"], row["position"], row["feature"]]), rel=1e-5, abs=1e-6
        )
        assert row["target"] in row["context"]
        assert len(row["window_ids"]) == 16 and row["target_id"] == row["window_ids"][row["position"]]
    assert not any(r["feature"] in DEAD for r in table)
    inactive = [r for r in table if r["sampling"] == "inactive"]
    assert inactive and all(r["activation"] <= 0 for r in inactive)
    dense_inactive = [r for r in inactive if r["feature"] == DENSE]
    assert rows[DENSE]["frequency"] > 0.6
    assert len(dense_inactive) == min(cfg.sampling.inactive_examples, len(acts) - rows[DENSE]["active_tokens"])
    assert len({(r["window"], r["position"]) for r in dense_inactive}) == len(dense_inactive)
    quantile = [r for r in table if r["sampling"] == "quantile" and r["feature"] == 0]
    assert len(quantile) == cfg.sampling.quantile_examples and all(r["activation"] > 0 for r in quantile)
    saved = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert saved["hook"] == "blocks.0.hook_resid_post" and saved["tokens"] == manifest.tokens


def test_feature_selection_and_forward_stops_after_hook(tmp_path: Path, subject: Path, sae: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt", 40)
    source = load_source(str(sae), str(subject), "cpu")
    ran: list[int] = []
    for i, block in enumerate(source.model.h):
        block.register_forward_hook(lambda _m, _a, _o, i=i: ran.append(i))
    ids = torch.zeros((2, 8), dtype=torch.long)
    assert source.latents(ids, torch.ones_like(ids)).shape == (2, 8, D_SAE)
    assert ran == [0]  # block 1 never ran

    cfg = config(tmp_path, subject, sae, corpus, features=(7, 1, 40))
    harvest(cfg)
    features = pq.read_table(tmp_path / "out" / "features.parquet").column("feature").to_pylist()
    assert features == [1, 7, 40]


def byte_bpe_tokenizer(lines: list[str]) -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2's and Llama-3's scheme) trained on `lines` with 300 tokens: Chinese characters
    (three UTF-8 bytes each) stay split over several tokens."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=alphabet)
    core.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def mixed_lines(n: int, seed: int = 0) -> list[str]:
    """Lines of Chinese followed by English words, and English-only lines."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        english = " ".join(rng.choices(ENGLISH, k=rng.randint(3, 12)))
        lines.append("".join(rng.choices(HANZI, k=rng.randint(5, 20))) + " " + english if i % 2 == 0 else english)
    return lines


@pytest.fixture(scope="module")
def bpe_subject(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 with a byte-level BPE tokenizer trained on English only (so Chinese is all byte tokens)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gpt2-bpe")
    tokenizer = byte_bpe_tokenizer(mixed_lines(80)[1::2])
    tiny_gpt2(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_targets_split_over_byte_tokens_are_whole_characters(tmp_path: Path, bpe_subject: Path, sae: Path) -> None:
    """A token holding part of a character's bytes has as target the smallest run of tokens around it that reads
    as whole characters; windows cut inside a character leave no U+FFFD at the context's ends."""
    corpus = tmp_path / "mixed.txt"
    corpus.write_text("\n".join(mixed_lines(60, seed=1)) + "\n", encoding="utf-8")
    harvest(config(tmp_path, bpe_subject, sae, corpus))
    tokenizer = load_source(str(sae), str(bpe_subject), "cpu").tokenizer
    table = pq.read_table(tmp_path / "out" / "exemplars").to_pylist()
    partial = [r for r in table if "\ufffd" in tokenizer.decode([r["target_id"]])]
    assert len(partial) > len(table) // 10  # the case is common here, not a corner
    for row in table:
        assert row["target"] and "\ufffd" not in row["target"] and "\ufffd" not in row["context"], row
        assert row["target"] in row["context"], row
        assert row["target_id"] == row["window_ids"][row["position"]]
    inside = 0
    for row in partial:
        ids, p = row["window_ids"], row["position"]
        assert any(c in HANZI for c in row["target"]), row
        # The smallest run holding the token that decodes without U+FFFD, by a brute-force search in the window.
        runs = sorted(((i, j) for i in range(1, p + 1) for j in range(p + 1, len(ids) + 1)), key=lambda r: r[1] - r[0])
        clean = [tokenizer.decode(ids[i:j]) for i, j in runs if "\ufffd" not in tokenizer.decode(ids[i:j])]
        if clean and clean[0].strip().startswith(row["target"][0]):  # else the run was cut short at the window's edge
            assert row["target"] == clean[0].strip(), row
            inside += 1
    assert inside > len(partial) / 2


def document_tokens(
    tokenizer: PreTrainedTokenizerFast, documents: list[str], context_len: int
) -> dict[tuple[int, int], tuple[list[int], int]]:
    """Per (window, position) of a text token: the full token ids of its document and the token's index there."""
    full = [tokenizer(d, add_special_tokens=False)["input_ids"] for d in documents]
    batches = list(iter_windows(iter(documents), tokenizer, context_len, 1000))
    valid = np.concatenate([b.valid for b in batches])
    first = np.cumsum([0] + [len(ids) for ids in full])  # the stream's text tokens are the documents', in order
    rank = (valid.ravel().cumsum() - 1).reshape(valid.shape)
    where: dict[tuple[int, int], tuple[list[int], int]] = {}
    for w, p in zip(*np.nonzero(valid), strict=True):
        d = int(np.searchsorted(first, rank[w, p], side="right") - 1)
        where[int(w), int(p)] = (full[d], int(rank[w, p] - first[d]))
    return where


def whole_characters(tokenizer: PreTrainedTokenizerFast, ids: list[int], at: int) -> str:
    """The reference target from a document's full token sequence: the smallest run [i, j) holding `at` that
    starts and ends on character boundaries (the document's text from token i on, and up to token j, decodes
    without U+FFFD at that end)."""
    i = max(k for k in range(at + 1) if not tokenizer.decode(ids[k:]).startswith("\ufffd"))
    j = min(k for k in range(at + 1, len(ids) + 1) if not tokenizer.decode(ids[:k]).endswith("\ufffd"))
    return tokenizer.decode(ids[i:j]).strip()


def test_a_character_cut_by_the_window_edge_is_completed_from_the_neighbouring_window(
    tmp_path: Path, bpe_subject: Path, sae: Path
) -> None:
    """Where a window's start or end cut a character, its other bytes are in the previous or next window (the same
    document goes on there): the target is that whole character, as the document's full token sequence decodes
    it, never "" (which the old code gave), and the row's context holds it."""
    documents = mixed_lines(30, seed=4)
    corpus = tmp_path / "mixed.txt"
    corpus.write_text("\n".join(documents) + "\n", encoding="utf-8")
    cfg = config(tmp_path, bpe_subject, sae, corpus, context_len=8)
    manifest = harvest(cfg)
    tokenizer = load_source(cfg.sae, cfg.model, "cpu").tokenizer
    where = document_tokens(tokenizer, documents, cfg.context_len)
    table = pq.read_table(tmp_path / "out" / "exemplars").to_pylist()
    starts = ends = 0  # rows whose character the window's start, or its end, cut
    for row in table:
        if "\ufffd" not in tokenizer.decode([row["target_id"]]):
            continue
        ids, at = where[row["window"], row["position"]]
        assert row["target"] == whole_characters(tokenizer, ids, at), row
        assert row["target"] in row["context"], row
        if row["target"] not in tokenizer.decode(row["window_ids"], skip_special_tokens=True):
            starts += row["position"] < cfg.context_len // 2
            ends += row["position"] >= cfg.context_len // 2
    assert starts > 10 and ends > 10  # common with 8-token windows
    assert manifest.unresolved_targets == 0


def test_targets_that_cannot_be_whole_characters_keep_u_fffd(
    tmp_path: Path, bpe_subject: Path, sae: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A character cut by the tokens limit has its other bytes nowhere in the harvest, and a U+FFFD written in the
    corpus is that character: both targets are U+FFFD (the old code gave ""), counted in the manifest."""
    documents = ["the cat \ufffd sat on the mat", *mixed_lines(12, seed=5)]
    tokenizer = byte_bpe_tokenizer(mixed_lines(80)[1::2])
    stream = [i for d in documents for i in tokenizer(d, add_special_tokens=False)["input_ids"]]
    # A limit that keeps only the first of the three byte tokens of the last Chinese character it can.
    limit = max(n for n in range(1, len(stream) - 1) if tokenizer.decode(stream[n - 1 : n + 2]) in HANZI)
    corpus = tmp_path / "cut.txt"
    corpus.write_text("\n".join(documents) + "\n", encoding="utf-8")
    cfg = config(tmp_path, bpe_subject, sae, corpus, tokens=limit)
    manifest = harvest(cfg)
    valid = np.concatenate([b.valid for b in iter_windows(iter(documents), tokenizer, cfg.context_len, 1000, limit)])
    cut = divmod(int(np.flatnonzero(valid.ravel())[-1]), cfg.context_len)  # (window, position) of the last token
    table = pq.read_table(tmp_path / "out" / "exemplars").to_pylist()
    assert all(row["target"] for row in table)
    marked = [row for row in table if "\ufffd" in row["target"]]
    assert manifest.unresolved_targets == len(marked) > 0
    assert {row["target"] for row in marked} == {"\ufffd"}
    assert any((row["window"], row["position"]) == cut for row in marked)
    assert any("the cat \ufffd sat" in row["context"] for row in marked)  # the corpus's own U+FFFD

    from labeler import cli

    args = ["harvest", "--sae", str(sae), "--model", str(bpe_subject), "--corpus", str(corpus), "--context-len"]
    assert cli.main([*args, str(cfg.context_len), "--tokens", str(limit), "--out", str(tmp_path / "cli")]) == 0
    assert f"({len(marked)} targets are U+FFFD: cut by --tokens, or so in the corpus)" in capsys.readouterr().err


def wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    """A BERT-like WordPiece tokenizer ([CLS] first, [SEP] between documents) whose words split into pieces."""
    pieces = ["play", "walk", "talk", "build", "##ing", "##ed", "##er", "##s", "##able", "##ness", "##ly"]
    tokens = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", *ENGLISH, *pieces]
    core = Tokenizer(models.WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]"
    )


def test_wordpiece_contexts_do_not_start_inside_a_word(tmp_path: Path, sae: Path) -> None:
    """A window that starts mid-word begins with continuation pieces ("##ing"): a context leaves them out (the old
    code began it with "##ing") unless the row's own token is one of them, and then keeps them without the mark."""
    tokenizer = wordpiece_tokenizer()
    folder = tmp_path / "bert-like"
    tiny_gpt2(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    rng = random.Random(6)
    stems, suffixes = ["play", "walk", "talk", "build"], ["ing", "ed", "er", "s", "able", "ness", "ly"]
    words = [rng.choice(stems) + "".join(rng.choices(suffixes, k=rng.randint(1, 3))) for _ in range(300)]
    corpus = tmp_path / "words.txt"
    corpus.write_text("\n".join(" ".join(words[i : i + 30]) + " the cat" for i in range(0, 300, 30)) + "\n")
    harvest(config(tmp_path, folder, sae, corpus, context_len=8))
    piece = {i for t, i in tokenizer.get_vocab().items() if t.startswith("##")}
    table = pq.read_table(tmp_path / "out" / "exemplars").to_pylist()
    past = within = 0
    for row in table:
        assert not row["context"].startswith("#") and "##" not in row["context"], row
        assert row["target"] in row["context"], row
        ids = row["window_ids"]
        lead = next(k for k in range(1, len(ids) + 1) if k == len(ids) or ids[k] not in piece) - 1
        if tokenizer.sep_token_id in ids[: row["position"]]:  # the row's document starts inside the window
            continue
        if lead and row["position"] > lead:  # the context starts at the window's first whole word
            assert row["context"].startswith(tokenizer.decode([ids[lead + 1]])), row
            past += 1
        elif lead:  # the target is one of the pieces
            assert row["context"].startswith(tokenizer.decode(ids[1 : lead + 1]).removeprefix("##")), row
            within += 1
    assert past > 50 and within > 10


def test_literal_special_token_text_is_plain_text(tmp_path: Path, bpe_subject: Path, sae: Path) -> None:
    """ "<|endoftext|>" written in the corpus is text: counted as its own tokens, never a special-token example."""
    rng = random.Random(2)
    lines = [
        " ".join(rng.choices(ENGLISH, k=6)) + " <|endoftext|> " + " ".join(rng.choices(ENGLISH, k=6)) for _ in range(30)
    ]
    corpus = tmp_path / "special.txt"
    corpus.write_text("\n".join(lines) + "\n")
    manifest = harvest(config(tmp_path, bpe_subject, sae, corpus))
    tokenizer = load_source(str(sae), str(bpe_subject), "cpu").tokenizer
    as_text = tokenizer(lines, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert manifest.tokens == sum(len(ids) for ids in as_text)
    features = pq.read_table(tmp_path / "out" / "features.parquet").to_pylist()
    assert all(r["frequency"] == r["active_tokens"] / manifest.tokens for r in features)
    table = pq.read_table(tmp_path / "out" / "exemplars").to_pylist()
    assert not any(r["target_id"] in tokenizer.all_special_ids for r in table)
    assert any("<|endoftext|>" in r["context"] for r in table)


def test_contexts_hold_only_the_targets_document(tmp_path: Path, subject: Path, sae: Path) -> None:
    """Several short documents share a window; a row's context is text of the target's own document only."""
    rng = random.Random(3)
    words = [w for w in WORDS if w.isalpha()]
    documents = [" ".join(rng.choices(words, k=rng.randint(2, 6))) for _ in range(60)]
    corpus = tmp_path / "short.txt"
    corpus.write_text("\n".join(documents) + "\n")
    cfg = config(tmp_path, subject, sae, corpus)
    harvest(cfg)
    tokenizer = load_source(cfg.sae, cfg.model, "cpu").tokenizer
    batches = list(iter_windows(iter(documents), tokenizer, cfg.context_len, 1000))
    valid = np.concatenate([b.valid for b in batches])
    separator = ~valid & np.concatenate([b.attention for b in batches])
    separator[:, 0] = False  # BOS
    document_of = separator.ravel().cumsum().reshape(separator.shape)  # Int[window token]: the document's index
    assert (separator.sum(1)[:-1] >= 2).all()  # every full window holds parts of three documents or more
    table = pq.read_table(tmp_path / "out" / "exemplars").to_pylist()
    for row in table:
        document = documents[document_of[row["window"], row["position"]]]
        assert row["context"] in document and row["target"] in row["context"], (row, document)


def test_tokens_limit_and_more_tokens_than_corpus(tmp_path: Path, subject: Path, sae: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt", 30)
    limited = harvest(config(tmp_path, subject, sae, corpus, tokens=100))
    assert limited.tokens == 100
    whole = harvest(config(tmp_path, subject, sae, corpus, out=str(tmp_path / "whole")))
    with pytest.warns(UserWarning, match="fewer than the 1,000,000 asked for"):
        asked = harvest(config(tmp_path, subject, sae, corpus, out=str(tmp_path / "more"), tokens=1_000_000))
    assert asked.tokens == whole.tokens > 100
    a = pq.read_table(tmp_path / "whole" / "features.parquet")
    b = pq.read_table(tmp_path / "more" / "features.parquet")
    assert a.equals(b)


def test_writes_to_an_fsspec_url(tmp_path: Path, subject: Path, sae: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt", 10)
    harvest(config(tmp_path, subject, sae, corpus, out="memory://harvest-test"))
    import fsspec

    fs = fsspec.filesystem("memory")
    assert fs.exists("/harvest-test/features.parquet") and fs.ls("/harvest-test/exemplars")


def test_refuses_to_overwrite(tmp_path: Path, subject: Path, sae: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt", 5)
    harvest(config(tmp_path, subject, sae, corpus))
    with pytest.raises(ValueError, match=r"already holds manifest\.json"):
        harvest(config(tmp_path, subject, sae, corpus))


# Bad input: each error names the problem.


def test_d_in_mismatch(tmp_path: Path, subject: Path) -> None:
    wrong = make_sae(tmp_path / "wrong", d_in=24)
    corpus = write_corpus(tmp_path / "corpus.txt", 5)
    with pytest.raises(SourceError, match=r"d_in=24 at hook blocks.0.hook_resid_post.*width 32"):
        harvest(config(tmp_path, subject, wrong, corpus))


def test_hook_out_of_range(tmp_path: Path, subject: Path) -> None:
    sae = make_sae(tmp_path / "deep", hook="blocks.5.hook_resid_pre")
    corpus = write_corpus(tmp_path / "corpus.txt", 5)
    with pytest.raises(SourceError, match="needs layer 5, but GPT2Model has 2 layers"):
        harvest(config(tmp_path, subject, sae, corpus))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "cfg.json").unlink(), "has no cfg.json"),
        (lambda d: (d / "cfg.json").write_text("{not json"), "cfg.json is not valid JSON"),
        (lambda d: (d / "sae_weights.safetensors").unlink(), "has no sae_weights.safetensors"),
        (lambda d: (d / "sae_weights.safetensors").write_bytes(b"\x00garbage"), "cannot load the SAE from"),
    ],
)
def test_broken_sae_folder(tmp_path: Path, subject: Path, damage: object, message: str) -> None:
    folder = make_sae(tmp_path / "broken")
    damage(folder)  # type: ignore[operator]
    corpus = write_corpus(tmp_path / "corpus.txt", 5)
    with pytest.raises(SourceError, match=message):
        harvest(config(tmp_path, subject, folder, corpus))


def test_empty_corpus(tmp_path: Path, subject: Path, sae: Path) -> None:
    corpus = tmp_path / "empty.txt"
    corpus.write_text("\n  \n\n")
    with pytest.raises(ValueError, match="is empty"):
        harvest(config(tmp_path, subject, sae, corpus))


def test_invalid_utf8(tmp_path: Path, subject: Path, sae: Path) -> None:
    corpus = tmp_path / "bad.txt"
    corpus.write_bytes(b"the dog ran\nthe cat \xff\xfe ate\n")
    with pytest.raises(ValueError, match=r"bad.txt, line 2: invalid UTF-8 at byte 8"):
        harvest(config(tmp_path, subject, sae, corpus))
    assert not (tmp_path / "out").exists()  # found before any work


def test_enormous_line(tmp_path: Path, subject: Path, sae: Path) -> None:
    corpus = tmp_path / "huge.txt"
    corpus.write_text("the dog\n" + "cat " * 300_000 + "\n")
    with pytest.raises(ValueError, match=r"huge.txt, line 2: longer than max_document_bytes=1,000,000"):
        harvest(config(tmp_path, subject, sae, corpus))


def test_cli_harvest(tmp_path: Path, subject: Path, sae: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from labeler import cli

    corpus = write_corpus(tmp_path / "corpus.txt", 40)
    common = ["harvest", "--sae", str(sae), "--model", str(subject), "--context-len", "16"]
    counts = ["--top", "2", "--per-feature", "3", "--inactive", "4", "--reservoir", "50", "--min-active-tokens", "2"]
    assert cli.main([*common, "--corpus", str(corpus), "--out", str(tmp_path / "a"), "--features", "0-8", *counts]) == 0
    rows = pq.read_table(tmp_path / "a" / "features.parquet").to_pylist()
    assert [r["feature"] for r in rows] == list(range(8))
    # The short flags of the example counts set the same SamplingConfig fields as the generated ones.
    assert [max(r[f"{kind}_examples"] for r in rows) for kind in ("top", "quantile", "inactive")] == [2, 3, 4]
    sampling = SamplingConfig(
        top_examples=2, quantile_examples=3, inactive_examples=4, reservoir=50, min_active_tokens=2
    )
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["settings"]["sampling"] == asdict(sampling)
    err = capsys.readouterr().err
    assert "harvesting" in err and "tok/s" in err and "8 features" in err
    # stderr is not a terminal here: the bar writes whole lines (a start and an end line), no carriage returns.
    bar = [line for line in err.split("\n") if "harvesting:" in line]
    assert len(bar) >= 2 and not any("\r" in line for line in bar)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\n")
    assert cli.main([*common, "--corpus", str(bad), "--out", str(tmp_path / "b")]) == 2
    assert "bad.txt, line 1: invalid UTF-8" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # argparse's own exit: status 2, the flag named
        cli.main([*common, "--corpus", str(corpus), "--out", str(tmp_path / "c"), "--features", "x"])
    assert refused.value.code == 2 and "argument --features: 'x': give a range A-B" in capsys.readouterr().err


def test_cli_harvest_refuses_too_long_windows_and_a_non_integer_d_in_before_writing(
    tmp_path: Path, subject: Path, sae: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from labeler import cli

    corpus = write_corpus(tmp_path / "corpus.txt", 5)
    common = ["harvest", "--model", str(subject), "--corpus", str(corpus)]
    assert cli.main([*common, "--sae", str(sae), "--context-len", "100000", "--out", str(tmp_path / "a")]) == 2
    assert re.search(
        r"labeler: error: --context-len 100000 is longer than the subject model .* takes \(\d+ positions\)",
        capsys.readouterr().err,
    )
    odd = make_sae(tmp_path / "odd")
    cfg = json.loads((odd / "cfg.json").read_text())
    (odd / "cfg.json").write_text(json.dumps({**cfg, "d_in": "abc"}))
    assert cli.main([*common, "--sae", str(odd), "--out", str(tmp_path / "b")]) == 2
    assert re.search(
        r"labeler: error: .*odd/cfg.json: d_in must be a positive integer, got 'abc'", capsys.readouterr().err
    )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_feature_with_non_finite_latents_fails_alone(tmp_path: Path, subject: Path, sae: Path) -> None:
    """An SAE latent that is NaN (a broken encoder column) fails that feature; every other feature's
    statistics and rows are exactly those of the clean SAE."""
    broken = tmp_path / "broken-sae"
    make_sae(broken)
    loaded = StandardSAE.load_from_disk(str(broken))
    with torch.no_grad():
        loaded.W_enc[0, 7] = math.nan
    loaded.save_model(broken)
    corpus = write_corpus(tmp_path / "corpus.txt", 30)
    clean = harvest(config(tmp_path, subject, sae, corpus, out=str(tmp_path / "clean")))
    manifest = harvest(config(tmp_path, subject, broken, corpus, out=str(tmp_path / "broken")))
    assert manifest.failed == 1 and manifest.skipped_tokens == 0 and manifest.tokens == clean.tokens

    rows = {r["feature"]: r for r in pq.read_table(tmp_path / "broken" / "features.parquet").to_pylist()}
    clean_rows = {r["feature"]: r for r in pq.read_table(tmp_path / "clean" / "features.parquet").to_pylist()}
    assert rows[7]["status"] == "failed" and rows[7]["non_finite_tokens"] == manifest.tokens
    assert "NaN or infinite" in rows[7]["error"]
    assert all(rows[f] == clean_rows[f] for f in range(D_SAE) if f != 7)
    exemplars = pq.read_table(tmp_path / "broken" / "exemplars").to_pylist()
    clean_exemplars = pq.read_table(tmp_path / "clean" / "exemplars").to_pylist()
    assert exemplars == [r for r in clean_exemplars if r["feature"] != 7]
    read_exemplars(tmp_path / "broken" / "exemplars")  # no NaN reaches the exemplar contract

    # Labelling that harvest records feature 7 as failed, with the harvest's reason, and labels its neighbours.
    from label_runs import run_info

    from labeler.discriminators.causal_lm import CausalLMConfig
    from labeler.optimise.config import OptimiserConfig
    from labeler.optimise.labelling import LabelConfig
    from labeler.run.config import SourceConfig
    from labeler.run.worker import EngineLabeller, LabellerSpec

    source = SourceConfig(str(tmp_path / "broken" / "exemplars"), str(tmp_path / "broken" / "features.parquet"))
    label = LabelConfig(optimiser=OptimiserConfig(restarts=1, max_steps=2, examples_per_step=4))
    spec = LabellerSpec(CausalLMConfig(model=str(subject)), label, source, run_info("r"))
    records = EngineLabeller(spec).label(np.array([6, 7, 8]))
    assert [(r.feature, r.status) for r in records] == [(6, "labelled"), (7, "failed"), (8, "labelled")]
    assert records[1].error is not None and records[1].error.startswith("harvest: the SAE latent was NaN")


def test_writes_to_s3_on_a_real_s3_server(
    tmp_path: Path, subject: Path, sae: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The output URL on moto's S3 server (a real S3 protocol server on 127.0.0.1), read back with s3fs."""
    import socket
    import subprocess
    import sys
    import time

    import fsspec

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-c", "from moto.server import main; main()", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        }.items():
            monkeypatch.setenv(name, value)
        for _ in range(100):
            with socket.socket() as client:
                if client.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        fsspec.get_filesystem_class("s3").clear_instance_cache()  # not one bound to an earlier test's server
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("harvest-bucket")
        corpus = write_corpus(tmp_path / "corpus.txt", 10)
        manifest = harvest(config(tmp_path, subject, sae, corpus, out="s3://harvest-bucket/run1"))
        fs.invalidate_cache()
        with fs.open("harvest-bucket/run1/features.parquet", "rb") as f:
            assert pq.read_table(f).num_rows == D_SAE
        with fs.open("harvest-bucket/run1/exemplars/part-00000.parquet", "rb") as f:
            assert pq.read_table(f).num_rows == manifest.exemplar_rows
        assert json.loads(fs.cat("harvest-bucket/run1/manifest.json"))["tokens"] == manifest.tokens
    finally:
        server.terminate()
        server.wait(timeout=30)
        # harvest() made an s3fs instance bound to this server; later tests must not be handed it.
        fsspec.get_filesystem_class("s3").clear_instance_cache()


def test_run_harvest_stage_writes_and_finds_the_harvest_with_the_run_folders_storage_options(
    tmp_path: Path, subject: Path, sae: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On moto's S3 server reached through sink.storage_options' endpoint_url (the keys in the environment,
    as a run config refuses them): the harvest lies in the run folder, so it is written with the run folder's
    options, where harvest_stage looks for it, and read with them; a second stage reuses it."""
    import fsspec
    from servers import MOTO_CREDENTIALS, MotoS3

    from labeler.run.loading import load_config
    from labeler.run.service import harvest_stage

    for name in (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_PROFILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    server = MotoS3(tmp_path)
    server.start()
    try:
        server.make_bucket("runs")
        for name, value in MOTO_CREDENTIALS.items():
            monkeypatch.setenv(name, value)
        options = server.storage_options(keys=False)
        corpus = write_corpus(tmp_path / "corpus.txt", 20)
        settings = {"sae": str(sae), "model": str(subject), "corpus": str(corpus), "context_len": 16, "tokens": 200}
        run = load_config(None, {"out": "s3://runs/r1", "harvest": settings, "sink.storage_options": options})
        lines: list[str] = []
        harvested = harvest_stage(run, log=lines.append)
        assert harvested.source.exemplars == "s3://runs/r1/harvest/exemplars"
        assert harvested.source.storage_options == options
        s3 = fsspec.filesystem("s3", **options)
        assert json.loads(s3.cat("runs/r1/harvest/manifest.json"))["features"] == D_SAE
        with s3.open("runs/r1/harvest/features.parquet", "rb") as f:
            assert pq.read_table(f).num_rows == D_SAE
        assert harvest_stage(run, log=lines.append) == harvested
        assert lines == ["reusing the finished harvest in s3://runs/r1/harvest"]
    finally:
        server.stop()
        fsspec.get_filesystem_class("s3").clear_instance_cache()


def test_run_harvest_stage_harvests_once_and_records_provenance(tmp_path: Path, subject: Path, sae: Path) -> None:
    """`labeler run` without exemplars harvests into OUT/harvest, reuses a finished harvest, and its manifest
    names the SAE, subject model and hook (so every label row does)."""
    from labeler.run.config import ConfigError
    from labeler.run.loading import load_config
    from labeler.run.service import harvest_stage, prepare

    corpus = write_corpus(tmp_path / "corpus.txt", 40)
    settings = {"sae": str(sae), "model": str(subject), "corpus": str(corpus), "context_len": 16, "tokens": 400}
    sampling = {"top_examples": 3, "inactive_examples": 4}  # nested as in `harvest: {sampling: {...}}`
    run = load_config(None, {"out": str(tmp_path / "run"), "harvest": {**settings, "sampling": sampling}})
    lines: list[str] = []
    harvested = harvest_stage(run, log=lines.append)
    assert harvested.source.exemplars == f"{run.out}/harvest/exemplars"
    assert harvested.source.features == f"{run.out}/harvest/features.parquet"
    assert read_exemplars(harvested.source.exemplars).num_rows > 0
    rows = pq.read_table(harvested.source.features).to_pylist()
    assert [max(r[f"{kind}_examples"] for r in rows) for kind in ("top", "inactive")] == [3, 4]
    recorded = json.loads((tmp_path / "run" / "harvest" / "manifest.json").read_text())["settings"]["sampling"]
    assert recorded == asdict(SamplingConfig(**sampling))
    assert harvest_stage(run, log=lines.append) == harvested and lines == [
        f"reusing the finished harvest in {run.out}/harvest"
    ]
    prepared = prepare(harvested)
    info = prepared.run_info()
    assert (info.sae_id, info.model, info.hook_point) == (str(sae), str(subject), "blocks.0.hook_resid_post")
    assert prepared.plan.n_features == D_SAE and set(DEAD) <= set(prepared.plan.dead_ids)  # planned, not dropped

    for wrong, message in (
        ({"top": 3}, r"unknown setting\(s\) \['harvest\.top'\]"),
        ({"top_examples": 3}, r"\['harvest\.top_examples'\].*; top_examples belongs under harvest\.sampling"),
        ({"sampling": {"top": 3}}, r"\['harvest\.sampling\.top'\]; harvest\.sampling accepts \['inactive_examples'"),
        ({"sampling": {"quantiles": 0}}, r"harvest\.sampling: quantiles must be at least 1, got 0"),
        ({"sampling": {"seed": "x"}}, r"harvest\.sampling\.seed must be int, got 'x'"),
    ):
        bad = load_config(None, {"out": str(tmp_path / "bad"), "harvest": {**settings, **wrong}})
        with pytest.raises(ConfigError, match=message):
            harvest_stage(bad)
        assert not (tmp_path / "bad").exists()
