"""`labeler report`: the static page, and the page as headless Chromium renders it."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from label_runs import records, run_info, write_run

from labeler.cli import main
from labeler.records.labels import LabelRecord, to_table
from labeler.store.report import render_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_the_most_confident_labels_and_apart_the_low_ones_with_their_examples_and_reasons() -> None:
    recs = records(40, 0)
    labels = to_table(recs, run_info("r"))
    labelled = sorted((r for r in recs if r.status == "labelled"), key=lambda r: -(r.confidence_score or 0))
    trusted, low = [r for r in labelled if r.confidence == "ok"], [r for r in labelled if r.confidence == "low"]
    best = labelled[0].feature
    exemplars = pa.table(
        {
            "run_id": ["r"] * 3,
            "feature": [best] * 3,
            "context": ["a <cat> & a dog", "a <cat> & a dog", "nothing"],
            "target": ["<cat>", "dog", "nothing"],
            "activation": [4.0, 1.0, 0.0],
            "position": [2, None, None],
        }
    )
    page = render_report(labels, exemplars, title="t <run>", top_n=5)
    shown = [int(f) for f in re.findall(r'class="feature-card" data-feature="(\d+)"', page)]
    assert shown == [r.feature for r in trusted[:5]] + [r.feature for r in low[::-1][:5]]
    assert f"Low-confidence labels: {len(low)} of {len(labelled)}, the 5 least confident" in page
    least = page[page.index(f'data-feature="{low[-1].feature}"') :].split("</article>")[0]
    assert f'<div class="reason">{low[-1].confidence_reason}</div>' in least
    assert '<span id="feature-count">40</span>' in page and "<title>t &lt;run&gt;</title>" in page
    assert page.count("<svg") == 2
    # The best feature's examples: the active context once, both targets shaded by activation, HTML escaped.
    card = page[page.index(f'data-feature="{best}"') :].split("</article>")[0]
    assert card.count("<li>") == 1 and "nothing" not in card
    assert 'rgba(255,120,0,1.00)" title="activation 4">&lt;cat&gt;</mark>' in card
    assert 'title="activation 1">dog</mark>' in card
    other = page[page.index(f'data-feature="{labelled[1].feature}"') :].split("</article>")[0]
    assert "No exemplars stored for this feature." in other


def test_report_of_a_run_without_exemplars_or_frequencies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_run(str(tmp_path / "run"), "run-a", n=5, with_exemplars=False)
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "r.html"), "--top", "2"]) == 0
    page = (tmp_path / "r.html").read_text()
    assert page.count('class="feature-card"') == 4 and "No exemplars stored for this feature." in page


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The page loads with no script error, counts its feature cards itself, and shows the feature count."""
    write_run(str(tmp_path / "run"), "run-a", n=60)
    page = tmp_path / "report.html"
    assert main(["report", str(tmp_path / "run"), "--out", str(page)]) == 0
    url = page.as_uri()
    assert CHROMIUM is not None
    dom = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, "--enable-logging=stderr", "--v=0", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stdout[:500]
    assert 'data-status="ok"' in body.group(0) and 'data-cards="20"' in body.group(0), body.group(0)
    assert '<span id="feature-count">60</span>' in dom.stdout
    assert not [line for line in dom.stderr.splitlines() if ":CONSOLE" in line], dom.stderr[-2000:]

    shot = tmp_path / "report.png"
    done = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, "--hide-scrollbars", "--window-size=1200,2400", f"--screenshot={shot}", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    assert png_size(shot) == (1200, 2400)
    assert shot.stat().st_size > 50_000  # a blank page compresses to a few kB; this one has plots and text


def test_targets_are_highlighted_where_they_stand_as_words() -> None:
    """Without a character offset, a target lights up as a whole word first, then as a word's start (a word
    piece), never inside another word when it also stands alone."""
    from labeler.store.report import _highlight

    assert _highlight("many as is a full glass", [{"target": "a", "activation": 1.0}], 1.0).startswith(
        "many as is <mark"
    )
    assert _highlight("trisect it", [{"target": "tri", "activation": 1.0}], 1.0).startswith("<mark")
    assert "the <mark" in _highlight("xx the dog", [{"target": "dog", "activation": 0.5, "position": 7}], 1.0)


def test_only_the_listed_features_exemplars_are_read() -> None:
    """A harvest holds exemplars of every feature; the page is built from the listed features' rows alone,
    and reads the same as a page given exactly those rows."""
    from label_runs import exemplars as exemplars_of

    from labeler.store.report import shown_exemplars

    recs = records(60, 0)
    labels = to_table(recs, run_info("r"))
    harvest = exemplars_of(recs)
    harvest = harvest.add_column(0, "run_id", pa.array(["r"] * harvest.num_rows))
    other_run = harvest.set_column(0, "run_id", pa.array(["other"] * harvest.num_rows))
    exemplars = pa.concat_tables([other_run, harvest])
    page = render_report(labels, exemplars, title="t", top_n=3)
    listed = {int(f) for f in re.findall(r'class="feature-card" data-feature="(\d+)"', page)}
    assert len(listed) == 6

    selected = shown_exemplars(exemplars, {("r", f) for f in listed})
    assert selected is not None
    assert selected.to_pylist() == [row for row in harvest.to_pylist() if row["feature"] in listed]
    reference = harvest.filter(pc.is_in(harvest.column("feature"), pa.array(sorted(listed))))
    assert render_report(labels, reference, title="t", top_n=3) == page
    assert shown_exemplars(None, {("r", 0)}) is None and shown_exemplars(exemplars, set()).num_rows == 0


def test_device_seconds_not_measured_are_left_out_of_the_total() -> None:
    recs = [
        LabelRecord(0, "labelled", label="a", heldout_auroc=0.9, device_seconds=1.5),
        LabelRecord(1, "labelled", label="b", heldout_auroc=0.8, device_seconds=float("nan")),
        LabelRecord(2, "failed", error="x", device_seconds=None),
        LabelRecord(3, "dead", error="never active", device_seconds=2.0),
    ]
    page = render_report(to_table(recs, run_info("r")), None, title="t")
    assert "<dt>device-seconds</dt><dd>3.5</dd>" in page


def _scored_labels() -> pa.Table:
    """Six labels: self-scores rising with the feature id, independent scores falling; two unsure."""
    from dataclasses import replace

    rows = []
    for i, record in enumerate(r for r in records(12, 0) if r.status == "labelled"):
        if i >= 6:
            break
        independent = 0.95 - 0.1 * i
        rows.append(
            replace(
                record,
                heldout_auroc=0.5 + 0.08 * i,
                independent_score=independent,
                independent_scorer="embedding",
                independent_judge="minilm",
                independent_n_examples=20,
                baseline_token="cat",
                baseline_token_score=0.6,
                confidence="low" if independent <= 0.6 else "ok",
            )
        )
    return to_table(rows, run_info("run-s"))


def test_scored_labels_are_ranked_by_the_independent_score_and_unsure_ones_marked(tmp_path: Path) -> None:
    labels = _scored_labels()
    page = render_report(labels, None, "scored", top_n=3)
    order = [int(f) for f in re.findall(r'class="feature-card" data-feature="(\d+)"', page)]
    by_independent = labels.sort_by([("independent_score", "descending")]).column("feature").to_pylist()
    assert order[:3] == by_independent[:3]  # not the self-score order, which is the reverse
    unsure = set(pc.filter(labels.column("feature"), pc.equal(labels.column("confidence"), "low")).to_pylist())
    assert len(unsure) == 2 and page.count('class="unsure-mark"') == 2
    assert set(int(f) for f in re.findall(r'data-feature="(\d+)" data-confidence="low"', page)) == unsure
    assert page.count('<circle class="dot') == 6 and page.count('class="dot unsure"') == 2
    assert "independent (embedding by minilm): 0.950" in page and "low-confidence labels</dt><dd>2" in page
    if CHROMIUM is None:
        return
    (tmp_path / "scored.html").write_text(page)
    shot, url = Path("/tmp/score-stage-report.png"), (tmp_path / "scored.html").as_uri()
    done = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, "--hide-scrollbars", "--window-size=1200,1400", f"--screenshot={shot}", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and png_size(shot) == (1200, 1400), done.stderr[-2000:]
