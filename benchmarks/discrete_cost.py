"""What discrete (GCG-style) search costs per feature against the soft label, in discriminator forward tokens.

Two testbeds, each with every method at the product's default steps (OptimiserConfig defaults, 4 restarts,
up to 100 steps): the tiny causal LM trained on the synthetic language (five features), and all-MiniLM-L6-v2
(`minilm`) on the paper's six features. Tokens are counted by a hook on the discriminator's model, only while
the optimiser runs (encoding the examples is the same for every method and is not counted); "grad tokens"
are those of passes that also run backward (about twice a forward's cost again).

    python benchmarks/discrete_cost.py [--data ../shared/paper-datasets] [--label-tokens 1 2] [--skip-lm]

Prints one JSON line per (testbed, method, L) with per-feature means, and the training AUROC each label
reaches against the exhaustive single-token optimum on the same training examples.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from labeler.discriminators.base import Discriminator, EncodedExamples
from labeler.discriminators.causal_lm import CausalLMConfig, CausalLMDiscriminator
from labeler.discriminators.embedding import EmbeddingConfig, EmbeddingDiscriminator
from labeler.optimise.engine import FeatureTask, OptimiserConfig, optimise
from labeler.optimise.exhaustive import exhaustive_search
from labeler.optimise.labelling import LabelConfig, prepare_tasks, with_target_ids
from labeler.optimise.scoring import auroc
from labeler.records.exemplars import FeatureExemplars, group_by_feature, validate_exemplars
from labeler.toys.paper_datasets import paper_exemplars
from labeler.toys.synthetic import default_world, feature_exemplars, train_tiny_lm

METHODS: dict[str, dict[str, Any]] = {
    "soft (paper)": {"search": "gradient", "straight_through": False, "c_entropy": OptimiserConfig.c_entropy},
    "straight-through": {"search": "gradient", "straight_through": True},
    "discrete": {"search": "discrete"},
}


class TokenCounter:
    """Counts the tokens of every forward pass of a model (rows x sequence length), with and without grad."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.forward = 0
        self.grad = 0
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        inputs = kwargs.get("input_ids", kwargs.get("inputs_embeds", args[0] if args else None))
        tokens = int(inputs.shape[0] * inputs.shape[1])
        self.forward += tokens
        self.grad += tokens if torch.is_grad_enabled() else 0


def train_auroc(disc: Discriminator, encoded: EncodedExamples, task: FeatureTask, label_ids: tuple[int, ...]) -> float:
    position = {int(token): i for i, token in enumerate(disc.allowed_ids.tolist())}
    rows, active = task.train()
    label = torch.tensor([[[position[token] for token in label_ids]]], device=disc.device)
    return auroc(disc.score_discrete(encoded, rows, label)[0, 0], active)


def measure(
    testbed: str, disc: Discriminator, counter: TokenCounter, features: list[FeatureExemplars], base: OptimiserConfig
) -> None:
    config = LabelConfig(optimiser=base)
    contexts, targets, tasks = prepare_tasks(features, config)
    encoded = disc.encode(contexts, targets)
    optimum = [exhaustive_search(disc, encoded, task, on="train").aurocs[0] for task in tasks]
    tasks = [with_target_ids(disc, task, targets, base.target_candidates) for task in tasks]
    for method, fields in METHODS.items():
        optimiser = replace(base, **fields)
        counter.forward = counter.grad = 0
        start = time.perf_counter()
        labels = optimise(disc, encoded, tasks, optimiser)
        seconds = time.perf_counter() - start
        reached = [
            train_auroc(disc, encoded, task, label.label_ids) / best
            for task, label, best in zip(tasks, labels, optimum, strict=True)
        ]
        n = len(tasks)
        print(
            json.dumps(
                {
                    "testbed": testbed,
                    "method": method,
                    "label_tokens": optimiser.label_tokens,
                    "forward_tokens_per_feature": counter.forward / n,
                    "grad_tokens_per_feature": counter.grad / n,
                    "mean_steps": float(np.mean([label.steps for label in labels])),
                    "converged": sum(label.converged for label in labels),
                    "features": n,
                    "train_auroc_over_optimum": [round(x, 4) for x in reached],
                    "reach_0.99": sum(x >= 0.99 for x in reached),
                    "mean_heldout_auroc": float(np.mean([label.heldout_auroc for label in labels])),
                    "labels": [disc.decode(label.label_ids) for label in labels],
                    "seconds_per_feature": seconds / n,
                }
            ),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/paper-datasets")
    parser.add_argument("--label-tokens", type=int, nargs="+", default=[1])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-lm", action="store_true", help="only the minilm testbed")
    parser.add_argument("--skip-minilm", action="store_true", help="only the synthetic LM testbed")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    if not args.skip_lm:
        with tempfile.TemporaryDirectory() as folder:
            lm = train_tiny_lm(default_world(), Path(folder), seed=0)
            disc = CausalLMDiscriminator.from_config(CausalLMConfig(model=str(lm)))
            counter = TokenCounter(disc.model)
            table = validate_exemplars(pa.Table.from_pylist(feature_exemplars(default_world(), 60, seed=3)))
            features = list(group_by_feature(table))
            for n_slot in args.label_tokens:
                measure("synthetic LM", disc, counter, features, OptimiserConfig(seed=args.seed, label_tokens=n_slot))
    if not args.skip_minilm:
        minilm = EmbeddingDiscriminator.minilm(EmbeddingConfig(kind="minilm"))
        counter = TokenCounter(minilm.model)
        features = list(group_by_feature(paper_exemplars(args.data)))
        for n_slot in args.label_tokens:
            # The encoder's defaults (EmbeddingConfig.optimiser_defaults) for every method: c_entropy 0.
            base = OptimiserConfig(seed=args.seed, label_tokens=n_slot, c_entropy=0.0)
            measure("minilm, paper features", minilm, counter, features, base)


if __name__ == "__main__":
    main()
