"""A static HTML page about one run: summary, score and frequency histograms, its most trusted labels and, apart,
its low-confidence ones with the reason for each.

Labels flagged low confidence are listed in a section of their own, least confident first, each card saying why
(labeler/optimise/confidence.py). The others are ranked by the score stage's independent score where it judged
them, then by their confidence score; each card shows the self-score (held-out AUROC under the discriminator that
chose the label) beside the independent one and the token baseline's, and a scatter plot sets the two scores
against each other.

One self-contained file (inline CSS, inline SVG plots drawn here, a few lines of inline script that
check the page) that a browser opens from disk; no server, no network. Each listed feature shows its
label next to its top activating examples, the target words highlighted by activation. This module
takes tables already read (labeler/store/dataset.py) and knows nothing about storage.
"""

from __future__ import annotations

import functools
import html
import math
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from labeler.records.labels import STATUSES


def render_report(labels: pa.Table, exemplars: pa.Table | None, title: str, top_n: int = 10, examples: int = 5) -> str:
    """The report page as HTML text.

    Only the listed features become Python objects: the summary and the plots read a few scalar columns, and
    the exemplars, which for a harvest cover every feature of the SAE, are filtered in Arrow to those listed.
    """
    ranked = _ranked(labels)
    low_mask = pc.fill_null(pc.equal(ranked.column("confidence"), "low"), False)
    trusted, low = ranked.filter(pc.invert(low_mask)), ranked.filter(low_mask)
    best = trusted.slice(0, top_n).to_pylist()
    unsure = low.sort_by([("confidence_score", "ascending"), ("feature", "ascending")]).slice(0, top_n).to_pylist()
    listed = [*best, *unsure]
    by_feature = _examples_by_feature(shown_exemplars(exemplars, {(r["run_id"], r["feature"]) for r in listed}))
    aurocs = ranked.column("heldout_auroc").to_pylist()
    frequencies = [f for f in labels.column("activation_frequency").to_pylist() if _finite(f)]
    body = [
        f"<h1>{_e(title)}</h1>",
        _summary(labels, aurocs),
        '<section class="plots">',
        _figure("Held-out AUROC of the labels", _histogram(aurocs, 0.0, 1.0, 20, "AUROC"), len(aurocs)),
        _figure(
            "Self-score (held-out AUROC) against independent score",
            _scatter(ranked),
            sum(_finite(v) for v in ranked.column("independent_score").to_pylist()),
        ),
        _figure(
            "Activation frequency (log10 share of tokens)",
            _histogram([math.log10(f) for f in frequencies if f > 0], *_log_range(frequencies), 20, "log10 frequency")
            if frequencies
            else '<p class="note">No activation frequencies recorded for this run (the harvest did not give them).</p>',
            len(frequencies),
        ),
        "</section>",
        f"<h2>Best {len(best)} labelled features</h2>",
        *[_card(r, by_feature.get((r["run_id"], r["feature"]), []), examples) for r in best],
        f'<h2 id="low-confidence">Low-confidence labels: {low.num_rows} of {ranked.num_rows}'
        f"{f', the {len(unsure)} least confident' if len(unsure) < low.num_rows else ''}</h2>",
        '<p class="note">Read their examples before using these labels; each says why it is low.</p>' if unsure else "",
        *[_card(r, by_feature.get((r["run_id"], r["feature"]), []), examples) for r in unsure],
    ]
    return _PAGE.format(title=_e(title), expected=len(listed), body="\n".join(body))


def shown_exemplars(exemplars: pa.Table | None, shown: set[tuple[str, int]]) -> pa.Table | None:
    """The rows of `exemplars` whose (run_id, feature) is in `shown`, in their order, selected in Arrow."""
    if exemplars is None:
        return None
    features_of: dict[str, list[int]] = defaultdict(list)
    for run_id, feature in shown:
        features_of[run_id].append(feature)
    feature_type = exemplars.schema.field("feature").type
    masks = [
        pc.and_(
            pc.equal(exemplars.column("run_id"), run_id),
            pc.is_in(exemplars.column("feature"), pa.array(features, feature_type)),
        )
        for run_id, features in features_of.items()
    ]
    return exemplars.filter(functools.reduce(pc.or_, masks)) if masks else exemplars.slice(0, 0)


def _ranked(labels: pa.Table) -> pa.Table:
    """The labelled features with a finite held-out AUROC, best first: by the independent score where it was
    computed (features without one after those with one), then by confidence score, then by feature."""
    auroc = labels.column("heldout_auroc")
    scored = labels.filter(pc.and_(pc.equal(labels.column("status"), "labelled"), pc.is_finite(auroc)))
    keys = [("independent_score", "descending"), ("confidence_score", "descending"), ("feature", "ascending")]
    return scored.sort_by(keys)


def _summary(labels: pa.Table, aurocs: list[float]) -> str:
    counts = Counter(labels.column("status").to_pylist())
    runs = sorted(set(labels.column("run_id").to_pylist()))
    first = labels.slice(0, 1).to_pylist()[0] if labels.num_rows else {}
    median = statistics.median(aurocs) if aurocs else float("nan")  # as the run's summary line gives it
    # NaN or null where a feature's time was not measured; a sum that includes it would read "nan"
    device_seconds = sum(s for s in labels.column("device_seconds").to_pylist() if _finite(s))
    facts = [
        ("run", ", ".join(runs) or "(no committed labels)"),
        ("model", first.get("model") or "-"),
        ("SAE", first.get("sae_id") or "-"),
        ("hook point", first.get("hook_point") or "-"),
        ("discriminator", first.get("discriminator") or "-"),
        ("started", str(first.get("started_at") or "-")),
        ("code", first.get("code_version") or "-"),
        ("config hash", first.get("config_hash") or "-"),
        ("features", f'<span id="feature-count">{labels.num_rows}</span>'),
        ("by status", ", ".join(f"{s}: {counts[s]}" for s in STATUSES)),
        ("median held-out AUROC", f"{median:.3f}" if aurocs else "-"),
        ("low-confidence labels", str(labels.column("confidence").to_pylist().count("low"))),
        *_independent_facts(labels),
        ("device-seconds", f"{device_seconds:.1f}"),
    ]
    items = "".join(f"<dt>{_e(k)}</dt><dd>{v if k == 'features' else _e(str(v))}</dd>" for k, v in facts)
    return f'<dl class="summary">{items}</dl>'


def _independent_facts(labels: pa.Table) -> list[tuple[str, str]]:
    judged = [v for v in labels.column("independent_score").to_pylist() if _finite(v)]
    if not judged:
        return [("independent score", "not scored (run with score.enabled, or `labeler score`)")]
    return [("median independent score", f"{statistics.median(judged):.3f}")]


def _scatter(ranked: pa.Table) -> str:
    """An SVG scatter plot: self-score (x) against independent score (y), unsure labels in red, the diagonal."""
    rows = [
        r
        for r in ranked.select(["feature", "label", "heldout_auroc", "independent_score", "confidence"]).to_pylist()
        if _finite(r["independent_score"])
    ]
    if not rows:
        return '<p class="note">No independent scores in this run (the score stage was off).</p>'
    size, pad = 260, 36
    span = size - 2 * pad

    def at(v: float) -> float:
        return pad + span * min(1.0, max(0.0, v))

    dots = "".join(
        f'<circle class="dot{" unsure" if r["confidence"] == "low" else ""}" cx="{at(r["heldout_auroc"]):.1f}" '
        f'cy="{size - at(r["independent_score"]):.1f}" r="4"><title>feature {r["feature"]} “{_e(r["label"] or "")}”: '
        f"self {r['heldout_auroc']:.3f}, independent {r['independent_score']:.3f}</title></circle>"
        for r in rows
    )
    axis = (
        f'<line x1="{pad}" y1="{size - pad}" x2="{size - pad}" y2="{size - pad}" stroke="#333"/>'
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{size - pad}" stroke="#333"/>'
        f'<line x1="{pad}" y1="{size - pad}" x2="{size - pad}" y2="{pad}" stroke="#bbb" stroke-dasharray="3 3"/>'
        f'<text x="{pad}" y="{size - pad + 14}" text-anchor="middle">0</text>'
        f'<text x="{size - pad}" y="{size - pad + 14}" text-anchor="middle">1</text>'
        f'<text x="{pad - 4}" y="{pad + 4}" text-anchor="end">1</text>'
        f'<text x="{size / 2}" y="{size - 6}" text-anchor="middle">self-score (held-out AUROC)</text>'
        f'<text x="12" y="{size / 2}" text-anchor="middle" transform="rotate(-90 12 {size / 2})">independent</text>'
    )
    return f'<svg class="scatter" width="{size}" height="{size}" viewBox="0 0 {size} {size}">{axis}{dots}</svg>'


def _figure(caption: str, content: str, n: int) -> str:
    return f"<figure><figcaption>{_e(caption)} <small>(n = {n})</small></figcaption>{content}</figure>"


def _histogram(values: Sequence[float], low: float, high: float, bins: int, x_label: str) -> str:
    """An SVG bar chart of `values` in `bins` equal bins over [low, high]."""
    if not values:
        return '<p class="note">No values to plot.</p>'
    width, height, pad = 420, 220, 36
    counts = [0] * bins
    span = (high - low) or 1.0
    for v in values:
        counts[min(bins - 1, max(0, int((v - low) / span * bins)))] += 1
    top = max(counts)
    bar_w = (width - 2 * pad) / bins
    bars = []
    for i, c in enumerate(counts):
        h = (height - 2 * pad) * c / top
        x, y = pad + i * bar_w, height - pad - h
        bars.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w - 1:.1f}" height="{h:.1f}">'
            f"<title>{low + i * span / bins:.3g} to {low + (i + 1) * span / bins:.3g}: {c}</title></rect>"
        )
    axis = (
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#333"/>'
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#333"/>'
        f'<text x="{pad}" y="{height - pad + 14}" text-anchor="middle">{low:.3g}</text>'
        f'<text x="{width - pad}" y="{height - pad + 14}" text-anchor="middle">{high:.3g}</text>'
        f'<text x="{width / 2}" y="{height - 6}" text-anchor="middle">{_e(x_label)}</text>'
        f'<text x="{pad - 4}" y="{pad + 4}" text-anchor="end">{top}</text>'
        f'<text x="{pad - 4}" y="{height - pad}" text-anchor="end">0</text>'
    )
    size = f'width="{width}" height="{height}" viewBox="0 0 {width} {height}"'
    return f'<svg class="hist" {size}>{axis}{"".join(bars)}</svg>'


def _log_range(frequencies: list[float]) -> tuple[float, float]:
    logs = [math.log10(f) for f in frequencies if f > 0] or [0.0]
    return math.floor(min(logs)), max(math.ceil(max(logs)), math.floor(min(logs)) + 1)


def _card(record: dict[str, Any], examples: list[dict[str, Any]], limit: int) -> str:
    scores = [
        ("AUROC", record["heldout_auroc"]),
        ("bal. acc.", record["heldout_balanced_accuracy"]),
        ("F1", record["heldout_f1"]),
    ]
    if record["baseline_label"] is not None:
        scores.append((f"baseline “{record['baseline_label']}”", record["baseline_auroc"]))
    score_text = "self: " + " · ".join(f"{_e(name)} {value:.3f}" for name, value in scores if _finite(value))
    if _finite(record["independent_score"]):
        judge = f"{record['independent_scorer']} by {record['independent_judge']}"
        score_text += f'<br><span class="independent">independent ({_e(judge)}): {record["independent_score"]:.3f}'
        if _finite(record["baseline_token_score"]):
            score_text += f" · token “{_e(record['baseline_token'])}” {record['baseline_token_score']:.3f}"
        score_text += "</span>"
    if _finite(record["confidence_score"]):
        score_text += f'<br><span class="confidence">confidence {record["confidence_score"]:.2f}</span>'
    unsure = record["confidence"] == "low"
    reason = _e(record["confidence_reason"] or "")
    mark = f'<div class="unsure-mark">low confidence</div><div class="reason">{reason}</div>'

    tops = " ".join(
        f"<span class=tok>{_e(t['token'])} {t['prob']:.2f}</span>"
        for slot in (record["top_tokens"] or [])[:1]
        for t in slot[:5]
    )
    return (
        f'<article class="feature-card" data-feature="{record["feature"]}" '
        f'data-confidence="{record["confidence"] or ""}">'
        f'<div class="label"><div class="fid">feature {record["feature"]}</div>'
        f'<div class="name">{_e(record["label"] or "")}</div>{mark if unsure else ""}'
        f'<div class="scores">{score_text}</div>'
        f'<div class="tops">{tops}</div></div>'
        f'<div class="examples">{_examples_html(examples, limit)}</div></article>'
    )


def _examples_by_feature(exemplars: pa.Table | None) -> dict[tuple[str, int], list[dict[str, Any]]]:
    grouped: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    if exemplars is not None:
        for row in exemplars.to_pylist():
            grouped[(row["run_id"], row["feature"])].append(row)
    return grouped


def _examples_html(rows: list[dict[str, Any]], limit: int) -> str:
    """The contexts with the highest activations, each target word highlighted by its activation."""
    if not rows:
        return '<p class="note">No exemplars stored for this feature.</p>'
    by_context: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_context[row["context"]].append(row)
    by_context = {c: t for c, t in by_context.items() if max(r["activation"] for r in t) > 0}
    if not by_context:
        return '<p class="note">No active examples stored for this feature.</p>'
    peak = max(max(r["activation"] for r in rows), 1e-12)
    contexts = sorted(by_context.items(), key=lambda kv: -max(r["activation"] for r in kv[1]))[:limit]
    items = []
    for context, targets in contexts:
        best = max(r["activation"] for r in targets)
        items.append(f'<li><span class="act">{best:.2f}</span> {_highlight(context, targets, peak)}</li>')
    return f'<ol class="ex">{"".join(items)}</ol>'


def _highlight(context: str, targets: list[dict[str, Any]], peak: float) -> str:
    """The context as HTML, each target shaded by its activation.

    A target is found at `position` (a character offset) when the row gives one, else at its first occurrence
    as a whole word (a harvest's `position` is a token index, and "a" should not light up inside "many"),
    else as the start of a word, else anywhere (a word piece inside a word).
    """
    spans: dict[int, tuple[int, float]] = {}
    for row in targets:
        target, position = row["target"], row.get("position")
        start = position if isinstance(position, int) and context[position : position + len(target)] == target else -1
        if start < 0:
            word = re.escape(target)
            found = re.search(rf"(?<!\w){word}(?!\w)", context) or re.search(rf"(?<!\w){word}", context)
            start = found.start() if found else context.find(target)
        if start >= 0 and row["activation"] > 0:
            spans[start] = (start + len(target), max(row["activation"], spans.get(start, (0, 0.0))[1]))
    out, cursor = [], 0
    for start in sorted(spans):
        end, activation = spans[start]
        if start < cursor:
            continue
        alpha = 0.15 + 0.85 * min(1.0, activation / peak)
        out.append(_e(context[cursor:start]))
        out.append(
            f'<mark style="background: rgba(255,120,0,{alpha:.2f})" title="activation {activation:.3g}">'
            f"{_e(context[start:end])}</mark>"
        )
        cursor = end
    out.append(_e(context[cursor:]))
    return "".join(out)


def _finite(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value)


def _e(text: str) -> str:
    return html.escape(text, quote=True)


REPORT_MARKER = "<!-- written by labeler report -->"
"""The page's second line: `labeler report --force` replaces only a file that holds it (one it wrote before)."""

_PAGE = """<!DOCTYPE html>
<!-- written by labeler report -->
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1100px; }}
h1 {{ font-size: 22px; margin: 0 0 12px; }} h2 {{ font-size: 17px; margin: 24px 0 8px; }}
dl.summary {{ display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; }}
dl.summary dt {{ color: #666; }} dl.summary dd {{ margin: 0; font-family: monospace; }}
.plots {{ display: flex; gap: 24px; flex-wrap: wrap; margin-top: 16px; }}
figure {{ margin: 0; }} figcaption {{ font-weight: 600; margin-bottom: 4px; }}
svg.hist text {{ font-size: 11px; fill: #333; }} svg.hist rect.bar {{ fill: #3b7dd8; }}
.feature-card {{ display: grid; grid-template-columns: 260px 1fr; gap: 16px; border-top: 1px solid #ddd;
  padding: 8px 0; }}
.fid {{ color: #666; font-size: 12px; }} .name {{ font-size: 18px; font-weight: 600; }}
.scores {{ font-size: 12px; color: #444; }} .tok {{ font-family: monospace; font-size: 11px; background: #eef;
  padding: 0 3px; margin-right: 3px; }}
ol.ex {{ margin: 0; padding-left: 20px; }} ol.ex li {{ margin-bottom: 3px; }}
.act {{ font-family: monospace; font-size: 11px; color: #888; margin-right: 4px; }}
mark {{ padding: 0 1px; border-radius: 2px; }} .note {{ color: #888; font-style: italic; }}
#errors {{ color: #b00; }}
svg.scatter text {{ font-size: 11px; fill: #333; }} svg.scatter circle.dot {{ fill: #3b7dd8; opacity: 0.8; }}
svg.scatter circle.dot.unsure {{ fill: #d33; }}
.reason {{ color: #a22; font-size: 12px; margin: 2px 0; }}
.unsure-mark {{ display: inline-block; background: #d33; color: #fff; font-size: 11px; font-weight: 600;
  padding: 0 6px; border-radius: 8px; }} .independent {{ color: #222; }}
</style></head>
<body data-status="loading" data-expected-cards="{expected}">
<div id="errors"></div>
{body}
<script>
window.addEventListener("error", function (e) {{
  document.body.dataset.status = "error";
  document.getElementById("errors").textContent = "page error: " + e.message;
}});
var cards = document.querySelectorAll(".feature-card").length;
var expected = Number(document.body.dataset.expectedCards);
document.body.dataset.cards = String(cards);
document.body.dataset.status = cards === expected ? "ok" : "error";
</script>
</body></html>
"""
