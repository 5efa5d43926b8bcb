"""Label quality and cost by search method, on features whose right names are known.

Testbeds:
* the taxonomy testbed (labeler/toys/taxonomy.py): by default built, in a temporary folder, from the LM that ships
  with the package (`--scale`, default bench) with the features of `--categories` (default: the scale's sample); or a
  testbed folder built before (`--taxonomy DIR`, e.g. `labeler testbed build --scale small --retrain --out DIR`).
  Its causal LM is the discriminator, DIR/truth.json gives each feature's kind and acceptable names;
* the paper's six features with all-MiniLM-L6-v2 (`minilm`), named by CONCEPT_WORDS (labeler/toys/paper_datasets.py),
  with `--paper DIR` (then the taxonomy testbed runs only if `--scale` or `--taxonomy` is given).

Methods: the soft label as in the paper, straight-through, and discrete (GCG-style) search, each at the given
label lengths, every other setting at the product's defaults for that discriminator kind. The baseline, in the
same run: the exhaustive single-token optimum on each feature's own training examples.

    python benchmarks/label_quality.py [--scale small|bench] [--categories FILE] [--taxonomy DIR]
        [--paper ../shared/paper-datasets] [--label-tokens 1 2]
        [--methods soft soft+rescore straight-through discrete discrete+rescore discrete+prior soft+pick discrete+pick]
        [--multi-token-methods soft straight-through discrete] [--features N] [--optimum-cache FILE]
        [--out benchmarks/results/label_quality-DATE-cpu.md]

The paper's six run first (minutes), then the taxonomy testbed (hours at bench scale on a CPU). The baseline takes
most of that; its optima are kept by a digest of the discriminator's weights and the feature's training examples, and
read from the shipped ones (benchmarks/data/optima-*.json, always read; an entry serves only the same weights and
examples) and from `--optimum-cache FILE` (read, and written with each optimum searched), so that a run on features
whose optima are known searches none (the table says how many baselines came from a cache). To ship the optima of a
feature set on a shipped LM, run it once with `--optimum-cache benchmarks/data/optima-<scale>-<set>-shipped.json` and
commit that file.

Prints one JSON line per (testbed, method, L, feature kind) and writes the Markdown table (with the command, the
machine and the time it took) to --out, rewritten after every row and marked UNFINISHED until the last. One row per
feature kind (truth.json's: concept, mixture, graded, none; the paper's are concepts). Columns: share of features
whose label is an acceptable name (exactly; or, for L > 1, with one of its words one; for a mixture, a name of either
category; for a no-concept feature, where no name is right, the share labelled with ANY category's name instead), the
share whose exhaustive optimum is one, the share whose training AUROC reaches 0.99 of the exhaustive optimum, the
mean of that ratio, the mean held-out AUROC, and the discriminator's forward tokens per feature while the optimiser runs
(encoding the examples is the same for every method and is not counted; "grad" counts those of passes that also run
backward, about twice a forward's cost again).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labeler.discriminators.base import Discriminator, EncodedExamples
from labeler.discriminators.causal_lm import CausalLMConfig, CausalLMDiscriminator
from labeler.discriminators.config import default_optimiser
from labeler.discriminators.embedding import EmbeddingConfig, EmbeddingDiscriminator
from labeler.optimise.config import OptimiserConfig
from labeler.optimise.engine import optimise
from labeler.optimise.exhaustive import SearchResult, best_token
from labeler.optimise.labelling import LabelConfig, prepare_tasks, with_target_ids
from labeler.optimise.scoring import auroc
from labeler.optimise.task import FeatureTask
from labeler.records.exemplars import FeatureExemplars, group_by_feature, read_exemplars
from labeler.toys import taxonomy
from labeler.toys.paper_datasets import CONCEPT_WORDS, PAPER_FEATURES, paper_exemplars

SHIPPED_OPTIMA = Path(__file__).resolve().parent / "data"
"""Where the shipped optimum caches lie (optima-*.json), read by every run."""
KINDS = ("concept", "mixture", "graded", "none")
"""truth.json's feature kinds, in the table's order."""

SOFT = {"search": "gradient", "straight_through": False, "c_entropy": OptimiserConfig.c_entropy}
PLAIN: dict[str, Any] = {"rescore_top_k": 0, "rescore_prior": 0, "rescore_neighbours": 0, "prior_candidates": 0}
PICK: dict[str, Any] = {"rescore_prior": 64, "rescore_neighbours": 64}
METHODS: dict[str, dict[str, Any]] = {
    "soft": {**PLAIN, **SOFT},
    "soft+rescore": {**PLAIN, **SOFT, "rescore_top_k": 64},
    "straight-through": {**PLAIN, "search": "gradient", "straight_through": True},
    "discrete": {**PLAIN, "search": "discrete"},
    "discrete+rescore": {**PLAIN, "search": "discrete", "rescore_top_k": 64},
    "discrete+prior": {**PLAIN, "search": "discrete", "prior_candidates": 8},
    "soft+pick": {**PLAIN, **SOFT, **PICK, "rescore_top_k": 64},
    "discrete+pick": {**PLAIN, "search": "discrete", **PICK, "prior_candidates": 8},
}
"""Each method's settings over the testbed's defaults (every pick and candidate source named, so that a method means the
same whatever the kind's defaults are; the causal-LM default is discrete+pick); soft is the paper's (its entropy term
on for every kind);
+rescore: the 64 most probable tokens of each restart's slots scored exactly on the training examples, the best kept;
+prior: also the 8 tokens the discriminator's own q favours on the step's active examples are swap candidates;
+pick: at the pick, also the 64 tokens q favours on all the training examples' active ones and the 64 nearest
neighbours of each restart's token are scored on the training examples (with +prior's swaps for discrete)."""


class TokenCounter:
    """Counts the tokens of every forward pass of a model (rows x sequence length), with and without grad."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.forward = 0
        self.grad = 0
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        inputs = kwargs.get("input_ids", kwargs.get("inputs_embeds", args[0] if args else None))
        if inputs is None:
            raise TypeError(f"{type(module).__name__} was called with neither input_ids nor inputs_embeds")
        tokens = int(inputs.shape[0] * inputs.shape[1])
        self.forward += tokens
        self.grad += tokens if torch.is_grad_enabled() else 0


@dataclass
class Testbed:
    name: str
    disc: CausalLMDiscriminator | EmbeddingDiscriminator
    """A kind whose network (`.model`) the TokenCounter can count."""
    features: list[FeatureExemplars]
    names: list[set[str]]
    """Per feature (in order), its acceptable names, lower case (none for a no-concept feature)."""
    kinds: list[str]
    """Per feature, its kind (one of KINDS)."""
    shown: list[list[str]]
    """Per feature, the names the table shows as its truth (a mixture's: one per category)."""
    any_names: set[str]
    """Every category name of the world, lower case: what a no-concept feature's label is checked against."""
    base: OptimiserConfig
    """The product's defaults for this discriminator kind."""
    model_digest: str
    """sha256 of the discriminator's weights (or its name, for the packaged minilm): the optimum cache's key part."""

    def first(self, n: int) -> None:
        """Keep only the first `n` features."""
        self.features, self.names, self.kinds, self.shown = (
            self.features[:n],
            self.names[:n],
            self.kinds[:n],
            self.shown[:n],
        )


def lower(names: list[str]) -> set[str]:
    """Names as a label is compared with them: lower case, WordNet's underscores as spaces."""
    return {name.replace("_", " ").lower() for name in names}


def taxonomy_testbed(folder: Path) -> Testbed:
    disc = CausalLMDiscriminator.from_config(CausalLMConfig(model=str(folder / "lm")))
    truth = json.loads((folder / "truth.json").read_text(encoding="utf-8"))
    features = list(group_by_feature(read_exemplars(folder / "exemplars.jsonl")))
    entries = [truth[str(f.feature)] for f in features]
    kinds = [entry["kind"] for entry in entries]
    scale = json.loads((folder / "accuracy.json").read_text(encoding="utf-8"))["scale"]
    lemmas = taxonomy.load_taxonomy(taxonomy.SCALES[scale]).lemmas
    shown = [
        [names[0] for names in entry["names_by_category"].values()]
        if entry["kind"] == "mixture"
        else sorted(lower(entry["names"]))[:3]
        for entry in entries
    ]
    digest = hashlib.sha256((folder / "lm" / "model.safetensors").read_bytes()).hexdigest()
    return Testbed(
        f"taxonomy {folder.name}",
        disc,
        features,
        [lower(entry["names"]) for entry in entries],
        kinds,
        shown,
        lower([name for names in lemmas.values() for name in names]),
        default_optimiser("hf"),
        digest,
    )


def paper_testbed(root: Path) -> Testbed:
    disc = EmbeddingDiscriminator.minilm(EmbeddingConfig(kind="minilm"))
    features = list(group_by_feature(paper_exemplars(root)))
    names = [CONCEPT_WORDS[PAPER_FEATURES[f.feature].name] for f in features]
    return Testbed(
        "paper six, minilm",
        disc,
        features,
        names,
        ["concept"] * len(features),
        [sorted(n)[:3] for n in names],
        set().union(*names),
        default_optimiser("minilm"),
        "all-MiniLM-L6-v2",
    )


def train_auroc(disc: Discriminator, encoded: EncodedExamples, task: FeatureTask, label_ids: tuple[int, ...]) -> float:
    position = {int(token): i for i, token in enumerate(disc.allowed_ids.tolist())}
    rows, active = task.train()
    label = torch.tensor([[[position[token] for token in label_ids]]], device=disc.device)
    return auroc(disc.score_discrete(encoded, rows, label)[0, 0], active)


def runs(methods: list[str], multi_token_methods: list[str], label_tokens: list[int]) -> list[tuple[int, str]]:
    """The (L, method) pairs to measure, in order: `methods` at L = 1, `multi_token_methods` at L > 1."""
    return [(n_slot, method) for n_slot in label_tokens for method in (methods if n_slot == 1 else multi_token_methods)]


def named_where_optimum_named(named: list[bool], optimum_named: list[bool]) -> float:
    """Of the features whose exhaustive optimum is an acceptable name, the share whose label is one (NaN if none)."""
    kept = [label for label, optimum in zip(named, optimum_named, strict=True) if optimum]
    return sum(kept) / len(kept) if kept else float("nan")


class OptimumCache:
    """Exhaustive optima by (discriminator weights, training examples) digest: those of the shipped files (read only)
    and those of a JSON file (None: no file) that every optimum searched is written to."""

    def __init__(self, path: Path | None, shipped: Sequence[Path] = ()) -> None:
        self.path = path
        self.shipped: dict[str, dict[str, Any]] = {}
        for file in shipped:
            self.shipped |= self.read(file)
        self.entries = self.read(path) if path is not None and path.exists() else {}
        self.hits = 0

    @staticmethod
    def read(path: Path) -> dict[str, dict[str, Any]]:
        try:
            entries: dict[str, dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise SystemExit(f"{path} is not an optimum cache this script wrote ({error}); name another file") from None
        return entries

    @staticmethod
    def key(model_digest: str, task: FeatureTask, contexts: list[str], targets: list[str]) -> str:
        rows, active = task.train()
        examples = [[contexts[row], targets[row], bool(flag)] for row, flag in zip(rows, active, strict=True)]
        text = json.dumps([model_digest, examples], ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def best(self, testbed: Testbed, encoded: EncodedExamples, task: FeatureTask, key: str) -> SearchResult:
        """The cached optimum under `key`, else `best_token`'s (then stored, the file rewritten at once)."""
        entry = self.entries.get(key) or self.shipped.get(key)
        if entry is not None:
            self.hits += 1
            return SearchResult(entry["feature"], tuple(entry["token_ids"]), tuple(entry["aurocs"]))
        result = best_token(testbed.disc, encoded, task)
        self.entries[key] = {"feature": result.feature, "token_ids": result.token_ids, "aurocs": result.aurocs}
        if self.path is not None:
            self.path.write_text(json.dumps(self.entries, indent=0), encoding="utf-8")
        return result


def measure(testbed: Testbed, pairs: list[tuple[int, str]], seed: int, cache: OptimumCache) -> Iterator[dict[str, Any]]:
    """Rows per (L, method) in `pairs` on `testbed`, one per feature kind present, each as soon as it is measured.

    The features of every kind are labelled in one batch: the forward tokens and seconds per feature are the batch's
    mean, the same in each kind's row."""
    disc, counter = testbed.disc, TokenCounter(testbed.disc.model)
    config = LabelConfig(optimiser=replace(testbed.base, seed=seed))
    contexts, targets, tasks = prepare_tasks(testbed.features, config)
    encoded = disc.encode(contexts, targets)
    started, hits = time.perf_counter(), cache.hits
    optimum = [
        cache.best(testbed, encoded, task, cache.key(testbed.model_digest, task, contexts, targets)) for task in tasks
    ]
    cached = cache.hits - hits
    exhaustive_seconds = (time.perf_counter() - started) / max(len(tasks) - cached, 1)
    tasks = [with_target_ids(disc, task, targets, config.optimiser.target_candidates) for task in tasks]
    best_words = [disc.decode(best.token_ids[:1]).strip().lower() for best in optimum]
    # What counts as named: an acceptable name; for a no-concept feature, which has none, any category's name.
    accepted = [
        testbed.any_names if kind == "none" else names for kind, names in zip(testbed.kinds, testbed.names, strict=True)
    ]
    optimum_named = [word in names for word, names in zip(best_words, accepted, strict=True)]
    for n_slot, method in pairs:
        optimiser = replace(config.optimiser, label_tokens=n_slot, **METHODS[method])
        counter.forward = counter.grad = 0
        started = time.perf_counter()
        labels = optimise(disc, encoded, tasks, optimiser)
        seconds = time.perf_counter() - started
        words = [disc.decode(label.label_ids).strip().lower() for label in labels]
        named = [word in names for word, names in zip(words, accepted, strict=True)]
        contains = [bool(set(w.split()) & names) or w in names for w, names in zip(words, accepted, strict=True)]
        reached = [
            train_auroc(disc, encoded, task, label.label_ids) / best.aurocs[0]
            for task, label, best in zip(tasks, labels, optimum, strict=True)
        ]
        for kind in (kind for kind in KINDS if kind in testbed.kinds):
            mine = [i for i, k in enumerate(testbed.kinds) if k == kind]
            n = len(mine)
            row = {
                "testbed": testbed.name,
                "method": method,
                "label_tokens": n_slot,
                "kind": kind,
                "features": n,
                "testbed_features": len(tasks),
                "named_exact": sum(named[i] for i in mine) / n,
                "named_contains": sum(contains[i] for i in mine) / n,
                "optimum_named": sum(optimum_named[i] for i in mine) / n,
                "named_where_optimum_named": named_where_optimum_named(
                    [named[i] for i in mine], [optimum_named[i] for i in mine]
                ),
                "reach_0.99_of_optimum": sum(reached[i] >= 0.99 for i in mine) / n,
                "mean_train_auroc_over_optimum": float(np.mean([reached[i] for i in mine])),
                "mean_heldout_auroc": float(np.nanmean([labels[i].heldout_auroc for i in mine])),
                "forward_tokens_per_feature": counter.forward / len(tasks),
                "grad_tokens_per_feature": counter.grad / len(tasks),
                "mean_steps": float(np.mean([labels[i].steps for i in mine])),
                "converged": sum(labels[i].converged for i in mine) / n,
                "seconds_per_feature": seconds / len(tasks),
                "exhaustive_seconds_per_feature": exhaustive_seconds,
                "optima_from_cache": cached,
                "train_auroc_over_optimum": [round(reached[i], 4) for i in mine],
                "labels": [words[i] for i in mine],
                "optimum_labels": [best_words[i] for i in mine],
                "truth": [testbed.shown[i] for i in mine],
            }
            print(json.dumps(row, ensure_ascii=False), flush=True)
            yield row


def truth_text(kind: str, shown: list[str]) -> str:
    """A feature's truth as the table shows it."""
    if kind == "none":
        return "no concept"
    if kind == "mixture":
        return " or ".join(shown)
    return shown[0] if shown else "?"


def markdown(rows: list[dict[str, Any]], command: str, seconds: float, finished: bool) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    baselines = {
        r["testbed"]: (r["exhaustive_seconds_per_feature"], r["optima_from_cache"], r["testbed_features"]) for r in rows
    }
    lines = [
        f"# Label quality by search method ({when})",
        "",
        f"Command: `{command}`; {seconds / 60:.1f} min on {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__} ({'CUDA' if torch.cuda.is_available() else 'CPU'})"
        + ("." if finished else f"; UNFINISHED: the rows measured in the first {seconds / 60:.1f} min only."),
        "",
        "Exhaustive baseline (`best_token`): "
        + ", ".join(
            f"{name} {s:.1f} s per feature searched" + (f" ({hit} of {n} optima from the cache)" if hit else "")
            for name, (s, hit, n) in baselines.items()
        )
        + ".",
        "",
        "Named: the label is an acceptable name (for L > 1: or one of its words is). Optimum: the exhaustive "
        "single-token optimum of training AUROC on the feature's own training examples ('optimum named': it is an "
        "acceptable name, the ceiling of a search that finds it at L = 1; 'named where optimum named': the share "
        "named among those features); 'reach' is the share of "
        "features whose label's training AUROC is at least 0.99 of it. Tokens: the discriminator's forward tokens "
        "per feature while the optimiser runs (grad: those of passes with backward), the mean over the testbed's "
        "features (labelled in one batch, every kind together). Kinds: concept (a category), mixture (two unrelated "
        "categories; naming either counts), graded (a category, activations growing with typicality, a few false "
        "positives and misses), none (no concept: for these 'named' and 'optimum named' are the share labelled with "
        "ANY category's name, where no name is right: lower is better).",
        "",
        "| testbed | method | L | kind | features | named | named (a word) | optimum named | named where optimum named "
        "| reach 0.99 | train / optimum | held-out AUROC | forward tokens | grad tokens | steps | converged "
        "| s / feature |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['testbed']} | {r['method']} | {r['label_tokens']} | {r['kind']} | {r['features']} | "
            f"{r['named_exact']:.0%} | "
            f"{r['named_contains']:.0%} | {r['optimum_named']:.0%} | {r['named_where_optimum_named']:.0%} | "
            f"{r['reach_0.99_of_optimum']:.0%} | "
            f"{r['mean_train_auroc_over_optimum']:.3f} | "
            f"{r['mean_heldout_auroc']:.3f} | {r['forward_tokens_per_feature']:,.0f} | "
            f"{r['grad_tokens_per_feature']:,.0f} | {r['mean_steps']:.0f} | {r['converged']:.0%} | "
            f"{r['seconds_per_feature']:.1f} |"
        )
    lines += ["", "## Labels per feature", ""]
    for r in rows:
        pairs = ", ".join(
            f"{label} ({truth_text(r['kind'], truth)}; optimum {best})"
            for label, truth, best in zip(r["labels"], r["truth"], r["optimum_labels"], strict=True)
        )
        lines.append(f"- {r['testbed']}, {r['method']}, L = {r['label_tokens']}, {r['kind']}: {pairs}")
    return "\n".join(lines) + "\n"


def check_taxonomy_folder(folder: Path) -> str | None:
    """Why `folder` cannot be measured as a taxonomy testbed (None: it can)."""
    if not (folder / "truth.json").is_file():
        return (
            f"{folder} is not a taxonomy testbed (no truth.json); build one with "
            "`labeler testbed build --scale small --out DIR`"
        )
    truth = json.loads((folder / "truth.json").read_text(encoding="utf-8"))
    if any("kind" not in entry for entry in truth.values()):
        return (
            f"{folder}/truth.json gives no feature kinds (an older build); build the testbed again with "
            "`labeler testbed build` (seconds from the shipped LM)"
        )
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--scale",
        choices=sorted(taxonomy.SCALES),
        help="measure the taxonomy testbed built from the LM shipped for this scale (the default, bench, when "
        "neither --taxonomy nor --paper is given)",
    )
    parser.add_argument(
        "--categories",
        type=Path,
        help="the features of the testbed built from the shipped LM (default: the scale's sample; the file format "
        "is `labeler testbed build --help`'s)",
    )
    parser.add_argument("--taxonomy", type=Path, help="a testbed folder written by `labeler testbed build`")
    parser.add_argument("--paper", type=Path, help="the paper's datasets folder (../shared/paper-datasets)")
    parser.add_argument("--label-tokens", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS), help="at L = 1")
    parser.add_argument(
        "--multi-token-methods",
        nargs="+",
        choices=list(METHODS),
        help="the methods at L > 1 (default: the same as --methods)",
    )
    parser.add_argument("--features", type=int, help="only each testbed's first N features (a quick look)")
    parser.add_argument(
        "--seed", type=int, default=0, help="the optimiser's seed (the testbed's is 0, the shipped one)"
    )
    parser.add_argument(
        "--optimum-cache",
        type=Path,
        help="a JSON file of exhaustive optima: read where it has a feature's, written with the ones searched (the "
        "shipped ones, benchmarks/data/optima-*.json, are read in any case)",
    )
    parser.add_argument("--out", type=Path, help="write the Markdown table here (refused if it exists)")
    args = parser.parse_args()
    if args.taxonomy is not None and (args.scale is not None or args.categories is not None):
        parser.error("--taxonomy names a built testbed, --scale and --categories build one: give one or the other")
    scale = args.scale or ("bench" if args.taxonomy is None and args.paper is None else None)
    if args.categories is not None and scale is None:
        parser.error("--categories needs --scale (the shipped LM to build the testbed from)")
    if args.taxonomy is not None and (problem := check_taxonomy_folder(args.taxonomy)) is not None:
        parser.error(problem)
    if args.out is not None and args.out.exists():
        parser.error(f"{args.out} exists; name a new file")
    # A bad file is refused before the models load.
    cache = OptimumCache(args.optimum_cache, sorted(SHIPPED_OPTIMA.glob("optima-*.json")))
    with tempfile.TemporaryDirectory(prefix="label_quality-") as scratch:
        folder = args.taxonomy
        if scale is not None:
            folder = Path(scratch) / scale
            try:
                taxonomy.build(
                    scale,
                    folder,
                    categories_file=args.categories,
                    seed=0,
                    log=lambda line: print(line, file=sys.stderr),
                )
            except taxonomy.TaxonomyError as err:
                parser.error(f"{err} (or measure a testbed built before: --taxonomy DIR)")
        run(args, folder, cache)


def run(args: argparse.Namespace, folder: Path | None, cache: OptimumCache) -> None:
    """Measure the testbeds (the paper's with --paper, the taxonomy testbed in `folder`) and write the table."""
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    testbeds = [  # the paper's six first: minutes, where the taxonomy testbed takes hours
        *([paper_testbed(args.paper)] if args.paper is not None else []),
        *([taxonomy_testbed(folder)] if folder is not None else []),
    ]
    pairs = runs(args.methods, args.multi_token_methods or args.methods, args.label_tokens)
    command = "python benchmarks/label_quality.py " + " ".join(sys.argv[1:])
    rows: list[dict[str, Any]] = []
    for testbed in testbeds:
        if args.features is not None:
            testbed.first(args.features)
        for row in measure(testbed, pairs, args.seed, cache):
            rows.append(row)
            if args.out is not None:  # after every row: a long run cut short keeps what it measured
                args.out.write_text(markdown(rows, command, time.perf_counter() - started, False), encoding="utf-8")
    if args.out is not None:
        args.out.write_text(markdown(rows, command, time.perf_counter() - started, True), encoding="utf-8")


if __name__ == "__main__":
    main()
