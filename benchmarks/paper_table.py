"""The paper's six features labelled with the MiniLM embedding discriminator on CPU, as a Markdown table.

For each feature: gradient descent's label (its top-3 tokens and probabilities), its held-out AUROC, the
exhaustive single-token optimum under the same discriminator and split, and whether the label names the
concept. Then the same for other label/example templates, without candidate re-scoring, and for labels
of 2 and 3 tokens.

    python benchmarks/paper_table.py [--data ../shared/paper-datasets] [--out benchmarks/results/paper_table.md]
    python benchmarks/paper_table.py --seeds 0 1 2 3 4 --variants 'encoder defaults (straight-through, ...)'

Prints one JSON line per (variant, seed, feature) and writes the Markdown file. With several seeds (each
one a different train/held-out split and different restarts), the file also says, per variant and
feature, in how many splits GD's label and the token exhaustive search picks on the training examples
reach 97% of the held-out optimum, and GD's label 97% of the best single token on the training examples.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from labeler.discriminators.base import EncodedExamples
from labeler.discriminators.embedding import EmbeddingConfig, EmbeddingDiscriminator
from labeler.discriminators.vocab import VocabFilter, read_word_list
from labeler.optimise.config import OptimiserConfig
from labeler.optimise.engine import optimise
from labeler.optimise.exhaustive import exhaustive_search
from labeler.optimise.labelling import LabelConfig, prepare_tasks
from labeler.optimise.scoring import auroc
from labeler.optimise.task import FeatureTask
from labeler.records.exemplars import FeatureExemplars, group_by_feature
from labeler.run.runtime import keep_freed_memory
from labeler.toys.paper_datasets import CONCEPT_WORDS, PAPER_FEATURES, paper_exemplars


@dataclass(frozen=True)
class Variant:
    name: str
    label_template: str
    example_template: str
    label_tokens: int = 1
    rescore_top_k: int = 64
    vocab_words: str | None = None
    """A word list for VocabFilter.words (labeler.discriminators.vocab.read_word_list), or None for every
    alphabetic word."""
    straight_through: bool = False
    """Score each step's argmax word, gradients as if soft (OptimiserConfig.straight_through)."""
    c_entropy: float | None = None
    """The entropy weight, or None for the command's --c-entropy."""


VARIANTS = (
    Variant("default", "any type of {label}", "a {word}"),
    Variant("no re-scoring (argmax, as the paper)", "any type of {label}", "a {word}", rescore_top_k=0),
    Variant("bare (no templates)", "{label}", "{word}"),
    Variant("word in its text", "any type of {label}", 'the word "{word}" in: {text}'),
    Variant("category template", "a kind of {label}", "a {word}"),
    Variant("L = 2", "any type of {label}", "a {word}", label_tokens=2),
    Variant("L = 3", "any type of {label}", "a {word}", label_tokens=3),
    Variant("category nouns", "any type of {label}", "a {word}", vocab_words="category-nouns"),
    Variant("category nouns, category template", "a kind of {label}", "a {word}", vocab_words="category-nouns"),
    Variant("straight-through, re-scoring", "any type of {label}", "a {word}", straight_through=True),
    Variant(
        "category nouns, straight-through, re-scoring",
        "any type of {label}",
        "a {word}",
        vocab_words="category-nouns",
        straight_through=True,
    ),
    Variant(
        "encoder defaults (straight-through, no entropy term, argmax)",
        "any type of {label}",
        "a {word}",
        rescore_top_k=0,
        straight_through=True,
        c_entropy=0.0,
    ),
    Variant(
        "encoder defaults, L = 2",
        "any type of {label}",
        "a {word}",
        label_tokens=2,
        rescore_top_k=0,
        straight_through=True,
        c_entropy=0.0,
    ),
    Variant(
        "encoder defaults, L = 3",
        "any type of {label}",
        "a {word}",
        label_tokens=3,
        rescore_top_k=0,
        straight_through=True,
        c_entropy=0.0,
    ),
    Variant(
        "category nouns, encoder defaults, L = 2",
        "any type of {label}",
        "a {word}",
        label_tokens=2,
        rescore_top_k=0,
        vocab_words="category-nouns",
        straight_through=True,
        c_entropy=0.0,
    ),
    Variant(
        "category nouns, encoder defaults",
        "any type of {label}",
        "a {word}",
        rescore_top_k=0,
        vocab_words="category-nouns",
        straight_through=True,
        c_entropy=0.0,
    ),
    Variant(
        "encoder defaults with re-scoring",
        "any type of {label}",
        "a {word}",
        straight_through=True,
        c_entropy=0.0,
    ),
    Variant(
        "category nouns, encoder defaults with re-scoring",
        "any type of {label}",
        "a {word}",
        vocab_words="category-nouns",
        straight_through=True,
        c_entropy=0.0,
    ),
)


@dataclass(frozen=True)
class Baselines:
    """Exhaustive search's view of one feature under one discriminator, to judge GD's label against."""

    optimum: tuple[str, float]
    """The best token on the held-out examples and its held-out AUROC: the oracle."""
    near_optimum: int
    """How many allowed tokens reach 97% of the oracle's held-out AUROC."""
    by_training: tuple[str, float]
    """The best token on the training examples and its held-out AUROC: what a search that never sees the
    held-out examples finds."""
    train_optimum: float
    """That token's AUROC on the training examples: the best any single token does on what GD optimises."""
    concept: tuple[str, float] | None
    """The allowed concept word (CONCEPT_WORDS) with the best held-out AUROC, and that AUROC."""
    seconds: float


def baselines(disc: EmbeddingDiscriminator, encoded: EncodedExamples, task: FeatureTask, name: str) -> Baselines:
    start = time.perf_counter()
    heldout = exhaustive_search(disc, encoded, task)
    on_train = exhaustive_search(disc, encoded, task, on="train")
    by_training = on_train.token_ids[0]
    on_heldout = dict(zip(heldout.token_ids, heldout.aurocs, strict=True))
    single = [disc.tokenizer(word, add_special_tokens=False).input_ids for word in sorted(CONCEPT_WORDS[name])]
    concepts = [(on_heldout[ids[0]], disc.decode(ids)) for ids in single if len(ids) == 1 and ids[0] in on_heldout]
    best = heldout.aurocs[0]
    return Baselines(
        optimum=(disc.decode(heldout.token_ids[:1]), best),
        near_optimum=sum(auroc >= 0.97 * best for auroc in heldout.aurocs),
        by_training=(disc.decode([by_training]), on_heldout[by_training]),
        train_optimum=on_train.aurocs[0],
        concept=None if not concepts else (max(concepts)[1], max(concepts)[0]),
        seconds=time.perf_counter() - start,
    )


def training_auroc(
    disc: EmbeddingDiscriminator, encoded: EncodedExamples, task: FeatureTask, label_ids: tuple[int, ...]
) -> float:
    """A label's AUROC on the feature's training examples (the head's positive scale and offset do not change it)."""
    position = {int(token): i for i, token in enumerate(disc.allowed_ids.tolist())}
    rows, active = task.train()
    label = torch.tensor([[[position[token] for token in label_ids]]], device=disc.device)  # [1 1 L]
    return auroc(disc.score_discrete(encoded, rows, label)[0, 0], active)


def run_variant(
    variant: Variant,
    features: list[FeatureExemplars],
    optimiser: OptimiserConfig,
    heldout: float,
    searched: dict[tuple, Baselines],
) -> list[dict]:
    """Label every feature under the variant; exhaustive search is run once per discriminator, feature and split
    (`searched` caches it across variants that share templates, vocabulary and seed)."""
    words = None if variant.vocab_words is None else read_word_list(variant.vocab_words)
    disc = EmbeddingDiscriminator.minilm(
        EmbeddingConfig(
            label_template=variant.label_template,
            example_template=variant.example_template,
            vocab=VocabFilter(words=words),
        )
    )
    config = LabelConfig(
        optimiser=replace(
            optimiser,
            label_tokens=variant.label_tokens,
            rescore_top_k=variant.rescore_top_k,
            straight_through=variant.straight_through,
            c_entropy=optimiser.c_entropy if variant.c_entropy is None else variant.c_entropy,
        ),
        heldout_fraction=heldout,
    )
    rows = []
    for examples in features:
        start = time.perf_counter()
        contexts, targets, tasks = prepare_tasks([examples], config)
        encoded = disc.encode(contexts, targets)
        (label,) = optimise(disc, encoded, tasks, config.optimiser)
        seconds = time.perf_counter() - start
        name = PAPER_FEATURES[examples.feature].name
        key = (variant.label_template, variant.example_template, variant.vocab_words, name, optimiser.seed)
        if key not in searched:
            searched[key] = baselines(disc, encoded, tasks[0], name)
        base = searched[key]
        train_auroc = training_auroc(disc, encoded, tasks[0], label.label_ids)
        label_words = disc.decode(label.label_ids).lower().split()
        rows.append(
            {
                "variant": variant.name,
                "seed": optimiser.seed,
                "feature": name,
                "paper_label": PAPER_FEATURES[examples.feature].paper_label,
                "label": disc.decode(label.label_ids),
                "top3": [
                    [(disc.decode([i]), round(p, 3)) for i, p in zip(ids[:3], probs[:3], strict=True)]
                    for ids, probs in zip(label.top_ids, label.top_probs, strict=True)
                ],
                "heldout_auroc": round(label.heldout_auroc, 4),
                "exhaustive_label": base.optimum[0],
                "exhaustive_auroc": round(base.optimum[1], 4),
                "fraction_of_optimum": round(label.heldout_auroc / base.optimum[1], 4),
                "tokens_at_97pct": base.near_optimum,
                "by_training_label": base.by_training[0],
                "by_training_auroc": round(base.by_training[1], 4),
                "train_auroc": round(train_auroc, 4),
                "train_optimum": round(base.train_optimum, 4),
                "fraction_of_train_optimum": round(train_auroc / base.train_optimum, 4),
                "concept_word": None if base.concept is None else base.concept[0],
                "concept_auroc": None if base.concept is None else round(base.concept[1], 4),
                "names_concept": any(word in CONCEPT_WORDS[name] for word in label_words),
                "steps": label.steps,
                "converged": label.converged,
                "seconds": round(seconds, 2),
                "exhaustive_seconds": round(base.seconds, 2),
                "heldout_examples": len(tasks[0].heldout),
                "heldout_active": int(tasks[0].heldout_active.sum()),
            }
        )
        print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
    return rows


def markdown(rows: list[dict], header: dict) -> str:
    lines = [
        f"# The paper's six features, MiniLM discriminator, CPU ({header['date']})",
        "",
        f"Command: `{header['command']}` at commit {header['commit']}; {header['machine']}; "
        f"total {header['total_seconds']:.0f} s.",
        f"Optimiser: {header['optimiser']}. Held-out share {header['heldout']}. "
        "Exhaustive = every token the variant allows (21,361 whole alphabetic words of 3+ letters by default) "
        "scored on the same held-out examples; its AUROC is the optimum GD is compared against. "
        "Tokens at >= 97%: how many allowed tokens reach 97% of that optimum on the held-out examples. "
        "Exhaustive by training AUROC: the token exhaustive search picks on the training examples, as GD must, "
        "with its held-out AUROC. Training optimum: that token's AUROC on the training examples, the best any "
        "single token does on the examples GD optimises on. Best concept word: among the words that name the "
        "concept (CONCEPT_WORDS in labeler/toys/paper_datasets.py) that the vocabulary allows, the best on the "
        "held-out examples.",
        "",
    ]
    seeds = sorted({row["seed"] for row in rows})
    for variant, seed in [(variant, seed) for variant in VARIANTS for seed in seeds]:
        mine = [row for row in rows if row["variant"] == variant.name and row["seed"] == seed]
        if not mine:
            continue
        lines += [
            f"## {variant.name}{f' (seed {seed})' if len(seeds) > 1 else ''}: label `{variant.label_template}`, "
            f"example `{variant.example_template}`, "
            f"L = {variant.label_tokens}, re-scoring top-k = {variant.rescore_top_k}, vocabulary "
            f"{variant.vocab_words or 'every alphabetic word of 3+ letters'}"
            f"{', straight-through' if variant.straight_through else ''}"
            f"{'' if variant.c_entropy is None else f', c_entropy {variant.c_entropy}'}",
            "",
            "| feature | paper's label | our label | top-3 tokens (p) per slot | held-out AUROC | exhaustive "
            "optimum (AUROC) | % of optimum | tokens at >= 97% | exhaustive by training AUROC (held-out, %) | "
            "our label's training AUROC (% of the training optimum) | best concept word (held-out, %) | "
            "names the concept | steps | seconds |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in mine:
            concept = "(none in the vocabulary)"
            if row["concept_word"] is not None:
                concept = (
                    f"{row['concept_word']} ({row['concept_auroc']:.3f}, "
                    f"{100 * row['concept_auroc'] / row['exhaustive_auroc']:.1f})"
                )
            top = " / ".join(", ".join(f"{t} {p:.2f}" for t, p in slot) for slot in row["top3"])
            lines.append(
                f"| {row['feature']} | {row['paper_label'] or '(none)'} | {row['label']} | {top} | "
                f"{row['heldout_auroc']:.3f} | {row['exhaustive_label']} ({row['exhaustive_auroc']:.3f}) | "
                f"{100 * row['fraction_of_optimum']:.1f} | {row['tokens_at_97pct']} | "
                f"{row['by_training_label']} ({row['by_training_auroc']:.3f}, "
                f"{100 * row['by_training_auroc'] / row['exhaustive_auroc']:.1f}) | "
                f"{row['train_auroc']:.3f} ({100 * row['fraction_of_train_optimum']:.1f}) | {concept} | "
                f"{'yes' if row['names_concept'] else 'no'} | "
                f"{row['steps']} | {row['seconds']:.1f} |"
            )
        lines.append("")
    if len(seeds) > 1:
        lines += seed_summary(rows, seeds)
    return "\n".join(lines)


def seed_summary(rows: list[dict], seeds: list[int]) -> list[str]:
    """Per variant and feature, over the seeds: GD's and the training pick's % of the held-out optimum."""
    lines = [
        f"## Over {len(seeds)} seeds ({', '.join(map(str, seeds))}): each a different train/held-out split and "
        "different restarts",
        "",
        "% of the held-out optimum per seed, and in how many seeds it is at least 97%: for GD's label, and for the "
        "token that exhaustive search picks on the training examples (the best a single-token search can do "
        "without seeing the held-out examples). Last, GD's label on the training examples against the best "
        "single token there: how close the optimiser gets on the examples it optimises on.",
        "",
    ]
    for variant in VARIANTS:
        mine = [row for row in rows if row["variant"] == variant.name]
        if not mine:
            continue
        lines += [
            f"### {variant.name}",
            "",
            "| feature | held-out examples (active) | GD's labels | GD, % of optimum | GD >= 97% | "
            "training pick, % of optimum | training pick >= 97% | GD on training examples, % of the training "
            "optimum | GD >= 97% there |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for feature in dict.fromkeys(row["feature"] for row in mine):
            per_seed = sorted((row for row in mine if row["feature"] == feature), key=lambda row: row["seed"])
            gd = [100 * row["fraction_of_optimum"] for row in per_seed]
            picked = [100 * row["by_training_auroc"] / row["exhaustive_auroc"] for row in per_seed]
            trained = [100 * row["fraction_of_train_optimum"] for row in per_seed]
            sizes = sorted({f"{row['heldout_examples']} ({row['heldout_active']})" for row in per_seed})
            lines.append(
                f"| {feature} | {', '.join(sizes)} | {', '.join(row['label'] for row in per_seed)} | "
                f"{', '.join(f'{x:.1f}' for x in gd)} | {sum(x >= 97 for x in gd)} of {len(gd)} | "
                f"{', '.join(f'{x:.1f}' for x in picked)} | {sum(x >= 97 for x in picked)} of {len(picked)} | "
                f"{', '.join(f'{x:.1f}' for x in trained)} | {sum(x >= 97 for x in trained)} of {len(trained)} |"
            )
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/paper-datasets")
    parser.add_argument(
        "--out", type=Path, default=Path(f"benchmarks/results/paper_table-{time.strftime('%Y-%m-%d')}-cpu.md")
    )
    parser.add_argument("--restarts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--heldout", type=float, default=0.3)
    parser.add_argument("--lr", type=float, default=OptimiserConfig.lr)
    parser.add_argument("--init-std", type=float, default=OptimiserConfig.init_std)
    parser.add_argument("--c-entropy", type=float, default=OptimiserConfig.c_entropy)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="run seeds (each one a train/held-out split); default: 0"
    )
    parser.add_argument("--variants", nargs="*", help="names of the variants to run (default: all)")
    args = parser.parse_args()

    unknown = sorted(set(args.variants or ()) - {variant.name for variant in VARIANTS})
    if unknown:
        parser.error(f"unknown variants {unknown}; the variants are {[variant.name for variant in VARIANTS]}")
    keep_freed_memory()
    start = time.perf_counter()
    features = list(group_by_feature(paper_exemplars(args.data)))
    optimiser = OptimiserConfig(
        restarts=args.restarts,
        max_steps=args.steps,
        lr=args.lr,
        init_std=args.init_std,
        c_entropy=args.c_entropy,
    )
    rows: list[dict] = []
    searched: dict[tuple, Baselines] = {}
    for seed in args.seeds:
        for variant in VARIANTS:
            if args.variants and variant.name not in args.variants:
                continue
            rows += run_variant(variant, features, replace(optimiser, seed=seed), args.heldout, searched)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    header = {
        "date": time.strftime("%Y-%m-%d"),
        "command": shlex.join(["python", *sys.argv]),
        "commit": commit or "unknown",
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "total_seconds": time.perf_counter() - start,
        "optimiser": f"{args.restarts} restarts, at most {args.steps} steps, lr {optimiser.lr}, v ~ N(0, "
        f"{optimiser.init_std}^2), c_entropy {optimiser.c_entropy}, {optimiser.examples_per_step} examples per step, "
        f"seed{'s' if len(args.seeds) > 1 else ''} {', '.join(map(str, args.seeds))}",
        "heldout": args.heldout,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(rows, header) + "\n")
    print(json.dumps({"written": str(args.out), "total_seconds": round(header["total_seconds"], 1)}))


if __name__ == "__main__":
    main()
