"""Features per second: the batched engine against a paper-style loop, same model and data, one run.

The paper's prototype labels one feature with one random start at a time (its prefix cache included).
The engine optimises F features x R restarts in one forward/backward per step. Both run the same
number of steps (early stopping off) on the same features, so the ratio measures batching alone.

    python benchmarks/engine_throughput.py [--features 64 --restarts 4 --steps 20 ...]

Prints one JSON line per measurement, then one with the ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace

import numpy as np
import torch
from transformers import LlamaForCausalLM

from labeler.discriminators.causal_lm import CausalLMConfig, CausalLMDiscriminator
from labeler.discriminators.vocab import VocabFilter
from labeler.optimise.config import OptimiserConfig
from labeler.optimise.engine import optimise
from labeler.optimise.labelling import LabelConfig, prepare_tasks
from labeler.records.exemplars import FeatureExemplars
from labeler.run.runtime import keep_freed_memory
from labeler.toys.synthetic import build_tokenizer, default_world, make_texts, model_config


def random_features(n_features: int, examples: int, seed: int) -> list[FeatureExemplars]:
    """Features over synthetic texts: each fires on a random third of the words it is shown."""
    world = default_world()
    rng = np.random.default_rng(seed)
    features = []
    for feature in range(n_features):
        texts = make_texts(world, examples, rng)
        targets = [str(rng.choice(text.split())) for text in texts]
        active = rng.random(examples) < 0.35
        active[:2], active[2:4] = True, False  # both classes present whatever the draw
        features.append(FeatureExemplars(feature, tuple(texts), tuple(targets), active.astype(np.float64)))
    return features


def batched(disc: CausalLMDiscriminator, features: list[FeatureExemplars], config: LabelConfig) -> float:
    """Seconds to label all features as one batch of F x R."""
    start = time.perf_counter()
    contexts, targets, tasks = prepare_tasks(features, config)
    optimise(disc, disc.encode(contexts, targets), tasks, config.optimiser)
    return time.perf_counter() - start


def paper_loop(disc: CausalLMDiscriminator, features: list[FeatureExemplars], config: LabelConfig) -> float:
    """Seconds to label the features one at a time, one restart at a time (each feature's prefixes cached once)."""
    start = time.perf_counter()
    for examples in features:
        contexts, targets, tasks = prepare_tasks([examples], config)
        encoded = disc.encode(contexts, targets)
        for restart in range(config.optimiser.restarts):
            single = replace(config.optimiser, restarts=1, seed=config.optimiser.seed + restart)
            optimise(disc, encoded, tasks, single)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--restarts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--examples", type=int, default=48, help="examples per feature")
    parser.add_argument("--examples-per-step", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64, help="hidden size (the MLP is 4x as wide)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--default-malloc", action="store_true", help="leave glibc's allocator settings alone")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="model weights dtype")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the model's forward (both methods; compiled in warm-up)"
    )
    args = parser.parse_args()

    allocator_tuned = False if args.default_malloc else keep_freed_memory()
    torch.manual_seed(args.seed)
    tokenizer = build_tokenizer(default_world())
    # The synthetic language's tiny Llama (random weights: speed does not depend on them), resized on request.
    config = model_config(tokenizer)
    config.update({"hidden_size": args.hidden, "intermediate_size": 4 * args.hidden, "num_hidden_layers": args.layers})
    model = LlamaForCausalLM(config).to(args.device, getattr(torch, args.dtype))
    disc = CausalLMDiscriminator(
        model, tokenizer, CausalLMConfig(model="random-llama", vocab=VocabFilter(min_chars=2), dtype=args.dtype)
    )
    if args.compile:
        disc.model.forward = torch.compile(disc.model.forward)
    # converge_prob above 1 can never be reached: every restart runs all steps in both methods.
    optimiser = OptimiserConfig(
        restarts=args.restarts,
        max_steps=args.steps,
        examples_per_step=args.examples_per_step,
        converge_prob=1.0,
        seed=args.seed,
    )
    label_config = LabelConfig(optimiser=optimiser, features_per_batch=args.features)
    features = random_features(args.features, args.examples, args.seed)
    batched(disc, features[:2], label_config)  # warm-up: first calls pay for lazy initialisation
    if args.compile:  # and for compiling each shape the two methods run
        one_step = replace(label_config, optimiser=replace(optimiser, max_steps=1))
        batched(disc, features, one_step)
        paper_loop(disc, features[:4], one_step)

    common = {
        "features": args.features,
        "restarts": args.restarts,
        "steps": args.steps,
        "examples_per_step": args.examples_per_step,
        "model": f"llama hidden={args.hidden} layers={args.layers}",
        "prompt_tokens": len(disc.prompt_ids(features[0].contexts[0], features[0].targets[0])[0])
        + len(disc.suffix_ids),
        "vocab": len(tokenizer),
        "allowed_tokens": len(disc.allowed_ids),
        "device": str(disc.device),
        "processor": torch.cuda.get_device_name()
        if disc.device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "allocator_tuned": allocator_tuned,
        "dtype": args.dtype,
        "compiled": args.compile,
        "date": time.strftime("%Y-%m-%d"),
    }
    results = {}
    for name, run in (("batched_engine", batched), ("paper_loop", paper_loop)):
        seconds = run(disc, features, label_config)
        results[name] = args.features / seconds
        print(
            json.dumps(
                {"measurement": name, "seconds": round(seconds, 3), "features_per_s": round(results[name], 3), **common}
            )
        )
    print(
        json.dumps(
            {"measurement": "speedup", "ratio": round(results["batched_engine"] / results["paper_loop"], 2), **common}
        )
    )


if __name__ == "__main__":
    main()
