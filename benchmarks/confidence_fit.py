"""Fit the confidence model of a discriminator kind on features whose right labels are known, and check it elsewhere.

    python benchmarks/confidence_fit.py --kind minilm --fit SIGNALS.jsonl [...] [--report SIGNALS.jsonl ...]
        [--into labeler/data/confidence.json] [--out benchmarks/results/confidence-DATE-cpu.md] [--fitted-on TEXT]

SIGNALS files hold one JSON object per labelled feature, as benchmarks/eye_test.py (`--signals-out`) and
benchmarks/label_quality.py (`--signals-out`) write them: the label's held-out AUROC, its held-out examples, its
coverage, margin and stability, its kind (`label_kind`) and whether it is right (`named`). The model is a logistic
regression on the standardised signals (labeler/optimise/confidence.py's SIGNALS) with an L2 penalty; its low flag's
threshold is the one that flags the most wrong labels of the fitted features beyond the right ones it flags, among
those that flag at most 20% of the right ones. `--into` writes it as
the kind's entry of a calibration file (the shipped one by default). `--report` files are scored with it, never fitted
on: the table gives their reliability (mean score against the share right, by score bin), the expected calibration
error, and the shares flagged low.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from labeler.optimise.confidence import SIGNALS, Calibration, Signals
from labeler.records.labels import LabelRecord

SHIPPED = Path(__file__).resolve().parent.parent / "labeler" / "data" / "confidence.json"
PENALTY = 1.0
"""L2 penalty on the standardised weights (a few dozen features per kind: keep the model small)."""
RIGHT_FLAGGED = 0.2
"""The threshold lets at most this share of the fitted right labels fall under it."""
BINS = 5


def read_rows(paths: list[Path]) -> list[dict[str, Any]]:
    rows = []
    for path in paths:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise SystemExit(f"{path}:{number}: not JSON: {err}") from err
    return rows


def signal_row(record: LabelRecord, named: bool) -> dict[str, Any]:
    """A labelled feature's row of a SIGNALS file: its label, whether it is right, its signals and its confidence (the
    benchmark that knows the truth adds its own columns)."""
    return {
        "feature": record.feature,
        "status": record.status,
        "label": record.label,
        "label_kind": record.label_kind,
        "named": named,
        "heldout_auroc": record.heldout_auroc,
        "n_heldout": record.n_heldout,
        "coverage": record.coverage,
        "margin": record.margin,
        "stability": record.stability,
        "confidence_score": record.confidence_score,
        "confidence": record.confidence,
        "confidence_reason": record.confidence_reason,
    }


def emit(rows: list[dict[str, Any]], total: dict[str, Any], seconds: float, signals_out: Path | None) -> None:
    """Print each feature's row and the summary as JSON lines; write the labelled features' rows to `signals_out`."""
    for row in rows:
        print(json.dumps(row))
    print(json.dumps({"summary": total, "seconds": seconds}))
    if signals_out:
        signals_out.write_text("".join(json.dumps(r) + "\n" for r in rows if r["status"] == "labelled"))


def signals_of(row: dict[str, Any]) -> Signals:
    return Signals(
        heldout_auroc=float("nan") if row["heldout_auroc"] is None else float(row["heldout_auroc"]),
        n_heldout=int(row["n_heldout"]),
        coverage=float(row["coverage"]),
        margin=float(row["margin"]),
        stability=float(row["stability"]),
        token=row["label_kind"] == "token",
    )


MONOTONE = ("heldout_auroc", "coverage", "margin", "stability", "log_heldout")
"""Signals whose weight may not be negative: more of them can only make a label more likely right."""


def fit(rows: list[dict[str, Any]], fitted_on: str) -> Calibration:
    """The logistic model of `named` on the rows' signals (Newton's method on the penalised log-likelihood). A
    monotone signal that gets a negative weight is left out and the rest fitted again (its weight 0), so that no
    reason for a low flag ever says that a label is too stable or fits too well."""
    x = np.stack([signals_of(r).vector() for r in rows])
    y = np.array([bool(r["named"]) for r in rows], dtype=np.float64)
    mean, scale = x.mean(0), x.std(0)
    scale[scale < 1e-9] = 1.0
    z = (x - mean) / scale
    used = [i for i in range(len(SIGNALS)) if x[:, i].std() > 1e-9]
    while True:
        w = _logistic(z[:, used], y)
        wrong = [i for i, weight in zip(used, w[1:], strict=True) if SIGNALS[i] in MONOTONE and weight < 0]
        if not wrong:
            break
        used = [i for i in used if i not in wrong]
    weights = np.zeros(len(SIGNALS))
    weights[used] = w[1:]
    model = Calibration(tuple(mean), tuple(scale), tuple(weights), float(w[0]), 0.5, fitted_on)
    scores = np.array([model.score(signals_of(r))[0] for r in rows])
    return Calibration(model.mean, model.scale, model.weights, model.bias, threshold(scores, y == 1), fitted_on)


def _logistic(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[bias, weights] of the L2-penalised logistic regression of y on the columns of z (bias not penalised)."""
    z = np.hstack([np.ones((len(z), 1)), z])
    w = np.zeros(z.shape[1])
    penalty = np.diag([0.0] + [PENALTY] * (z.shape[1] - 1))
    for _ in range(50):
        p = 1 / (1 + np.exp(-z @ w))
        gradient = z.T @ (p - y) + penalty @ w
        hessian = (z * (p * (1 - p))[:, None]).T @ z + penalty
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return w


def threshold(scores: np.ndarray, right: np.ndarray) -> float:
    """Where to flag low: of the cuts between the scores that flag at most RIGHT_FLAGGED of the right labels, the one
    flagging the largest share of wrong labels minus the share of right ones it flags."""
    cuts = np.unique(np.concatenate([[0.0], (np.sort(scores)[1:] + np.sort(scores)[:-1]) / 2]))
    best, best_gain = 0.0, -np.inf
    for cut in cuts:
        flagged = scores < cut
        right_share = flagged[right].mean() if right.any() else 0.0
        wrong_share = flagged[~right].mean() if (~right).any() else 0.0
        if right_share <= RIGHT_FLAGGED and wrong_share - right_share > best_gain:
            best, best_gain = float(cut), wrong_share - right_share
    return round(best, 4)


def check(model: Calibration, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Reliability by score bin, expected calibration error, and the shares flagged low."""
    scores = np.array([model.score(signals_of(r))[0] for r in rows])
    right = np.array([bool(r["named"]) for r in rows])
    edges = np.linspace(0, 1, BINS + 1)
    table, ece = [], 0.0
    for low, high in itertools.pairwise(edges):
        inside = (scores >= low) & ((scores < high) | (high == 1.0))
        if inside.any():
            table.append((low, high, int(inside.sum()), float(scores[inside].mean()), float(right[inside].mean())))
            ece += inside.sum() / len(rows) * abs(scores[inside].mean() - right[inside].mean())
    flagged = scores < model.threshold
    by_kind: dict[str, dict[str, int]] = {}
    for r, f in zip(rows, flagged, strict=True):
        entry = by_kind.setdefault(str(r.get("truth", "?")), {"features": 0, "flagged": 0, "right": 0})
        entry["features"] += 1
        entry["flagged"] += int(f)
        entry["right"] += int(bool(r["named"]))
    return {
        "features": len(rows),
        "right": int(right.sum()),
        "ece": float(ece),
        "bins": table,
        "wrong_flagged": f"{int((flagged & ~right).sum())} of {int((~right).sum())}",
        "right_flagged": f"{int((flagged & right).sum())} of {int(right.sum())}",
        "by_truth": by_kind,
    }


def write_into(path: Path, kind: str, model: Calibration) -> None:
    """Set `kind`'s entry of the calibration file at `path` (made when absent)."""
    raw: dict[str, Any] = (
        json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"signals": list(SIGNALS), "kinds": {}}
    )
    if raw["signals"] != list(SIGNALS):
        raise SystemExit(f"{path} holds models of other signals ({raw['signals']}); write to another file")
    raw["kinds"][kind] = asdict(model)
    path.write_text(json.dumps(raw, indent=1) + "\n", encoding="utf-8")


def markdown(kind: str, model: Calibration, fitted: dict[str, Any], reports: dict[str, Any], command: str) -> str:
    lines = [
        f"# Confidence calibration, {kind} ({datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Command: `{command}`. Fitted on: {model.fitted_on}. Threshold of the low flag: {model.threshold:.3f}.",
        "",
        "| signal | weight (per standard deviation) |",
        "|---|---|",
        *[f"| {name} | {weight:+.3f} |" for name, weight in zip(SIGNALS, model.weights, strict=True)],
        "",
    ]
    for title, result in (("fitted features", fitted), *reports.items()):
        lines += [
            f"## {title}",
            "",
            f"{result['features']} features, {result['right']} right; expected calibration error "
            f"**{result['ece']:.3f}**; wrong labels flagged low: {result['wrong_flagged']}; right labels flagged "
            f"low: {result['right_flagged']}.",
            "",
            "| score bin | features | mean score | share right |",
            "|---|---|---|---|",
            *[f"| {lo:.1f}-{hi:.1f} | {n} | {mean:.2f} | {share:.2f} |" for lo, hi, n, mean, share in result["bins"]],
            "",
            "| truth kind | features | flagged low | right |",
            "|---|---|---|---|",
            *[
                f"| {k} | {v['features']} | {v['flagged']} | {v['right']} |"
                for k, v in sorted(result["by_truth"].items())
            ],
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", required=True, help="the discriminator kind (hf, minilm, embedding)")
    parser.add_argument("--fit", type=Path, nargs="+", required=True, help="signals files to fit on")
    parser.add_argument("--report", type=Path, nargs="*", default=[], help="signals files to check on, never fitted")
    parser.add_argument("--into", type=Path, default=SHIPPED, help="the calibration file to write the kind's model in")
    parser.add_argument("--fitted-on", required=True, help="what the fitted features are, for the file and the table")
    parser.add_argument("--out", type=Path, help="the Markdown table")
    args = parser.parse_args()
    rows = read_rows(args.fit)
    model = fit(rows, args.fitted_on)
    fitted = check(model, rows)
    reports = {f"report: {path.name}": check(model, read_rows([path])) for path in args.report}
    write_into(args.into, args.kind, model)
    print(json.dumps({"kind": args.kind, "model": asdict(model), "fitted": fitted, "reports": reports}, default=str))
    if args.out:
        command = "python " + shlex.join(["benchmarks/confidence_fit.py", *sys.argv[1:]])
        args.out.write_text(markdown(args.kind, model, fitted, reports, command), encoding="utf-8")


if __name__ == "__main__":
    main()
