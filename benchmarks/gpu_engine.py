"""Labelling throughput at a real model's shape: the batched engine, its FLOP rate against the chip's, the paper loop.

Random-weight models built from transformers' config classes with the published shapes (no download; speed
does not depend on the weights), a word-level tokenizer built here with as many tokens as the model has
embedding rows (the special tokens of the model's chat template included), and synthetic exemplars: texts of
64 words, the paper's prompt in the model's chat template. The engine (labeler.optimise.engine.optimise with
the causal-LM discriminator) labels F features x R restarts per step; the paper-style loop labels one feature
with one restart at a time, its prefixes encoded once per feature. Both run every step (early stopping off),
so the ratio measures batching alone; the batched rate is the floor at full steps.

FLOPs are counted, not measured: per optimisation step, with rows = live features x R x N and S suffix
tokens per row (the L label slots and the rest of the prompt),

    4 * rows * (P * S + d * V_model * K)                  linear layers and the LM head on K kept positions
  + 3 * rows * layers * 4 * heads * head_dim * sum(ctx)   attention over the prefix and the earlier suffix
  + 4 * F * R * L * V_allowed * d                         the soft label p @ E

where P is the non-embedding parameter count and ctx the keys a suffix token attends to. The factor 4 is
2 for the forward's multiply-adds and 2 for the backward with respect to the inputs only (frozen weights:
no weight gradients); attention's backward also forms dQ, dK and dV of the suffix, hence 3 x its forward.
MFU = counted FLOPs per second of optimisation steps / the bf16 matmul rate measured in the same run
(an 8192^3 product on a GPU; 1024^3 on a CPU).

    python benchmarks/gpu_engine.py --shape gemma-2-2b --device cuda [--profile OUT.txt]
    python benchmarks/gpu_engine.py --shape tiny            # seconds on a CPU (the CI test)

Prints one JSON line per measurement: the setup, the matmul peak, the batched engine, the paper loop and
their ratio. It imports only torch, transformers, tokenizers, numpy and the engine's modules (no Ray,
no pyarrow, no sae-lens), so it runs from a source tree on a machine without the project installed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import re
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from labeler.discriminators.causal_lm import CausalLMConfig, CausalLMDiscriminator
from labeler.discriminators.prompt import PromptTemplate
from labeler.optimise.config import OptimiserConfig
from labeler.optimise.engine import optimise
from labeler.optimise.loss import objective
from labeler.optimise.task import FeatureTask
from labeler.run.runtime import keep_freed_memory

GEMMA_TEMPLATE = (  # Gemma 2's own: no system role (the discriminator then merges it into the user turn)
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] | trim }}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
LLAMA_TEMPLATE = (  # Llama 3's, without its date header
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


@dataclass(frozen=True)
class Shape:
    """A model shape: its config class and values, its chat template and its special tokens."""

    arch: type[Any]
    config: dict[str, Any]
    template: str
    specials: tuple[str, ...]
    bos: str
    eos: str


SHAPES = {
    "gemma-2-2b": Shape(  # google/gemma-2-2b's config.json
        Gemma2ForCausalLM,
        dict(
            vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
            num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
            sliding_window=4096, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
            hidden_activation="gelu_pytorch_tanh", max_position_embeddings=8192, tie_word_embeddings=True,
        ),
        GEMMA_TEMPLATE, ("<start_of_turn>", "<end_of_turn>"), "<bos>", "<eos>",
    ),
    "llama-3-8b": Shape(  # meta-llama/Meta-Llama-3-8B-Instruct's config.json
        LlamaForCausalLM,
        dict(
            vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
            rms_norm_eps=1e-5, tie_word_embeddings=False,
        ),
        LLAMA_TEMPLATE, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        "<|begin_of_text|>", "<|end_of_text|>",
    ),
    "tiny": Shape(  # Gemma 2's architecture (soft-capping, sliding window, GQA) at a size a CI runner labels in seconds
        Gemma2ForCausalLM,
        dict(
            vocab_size=1024, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=4096,
            attn_logit_softcapping=50.0, final_logit_softcapping=30.0, max_position_embeddings=1024,
        ),
        GEMMA_TEMPLATE, ("<start_of_turn>", "<end_of_turn>"), "<bos>", "<eos>",
    ),
}  # fmt: skip
CONFIGS = {"gemma-2-2b": Gemma2Config, "llama-3-8b": LlamaConfig, "tiny": Gemma2Config}


def synthetic_words(n: int) -> list[str]:
    """n distinct pronounceable alphabetic words ("baba", "babe", ...), shortest first."""
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
    words: list[str] = []
    level = [""]
    while len(words) < n:
        level = [w + s for w in level for s in syllables]
        words.extend(w for w in level if len(w) >= 4)
    return words[:n]


def build_tokenizer(shape: Shape) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with exactly the model's vocabulary size: specials, the prompt's words, digits,
    then synthetic words. Every synthetic word passes the default label filter, as most real word tokens do."""
    vocab_size = shape.config["vocab_size"]
    template = PromptTemplate()
    prompt = " ".join([template.system, template.user, template.assistant_prefix, "system user model assistant"])
    pieces = ["<unk>", "<pad>", shape.bos, shape.eos, *shape.specials, *re.findall(r"\w+|[^\w\s]", prompt)]
    pieces = list(dict.fromkeys([*pieces, *"0123456789"]))
    pieces += [w for w in synthetic_words(vocab_size) if w not in set(pieces)][: vocab_size - len(pieces)]
    core = Tokenizer(models.WordLevel(vocab={tok: i for i, tok in enumerate(pieces)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    core.decoder = decoders.WordPiece(prefix="##")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", bos_token=shape.bos, eos_token=shape.eos
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(shape.specials)})
    tokenizer.chat_template = shape.template
    if len(tokenizer) != vocab_size:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens, the model {vocab_size} embedding rows")
    return tokenizer


def build_model(shape: Shape, device: torch.device, dtype: torch.dtype) -> PreTrainedModel:
    """Random weights at the shape, made directly on the device in the dtype."""
    config = shape.arch.config_class(**shape.config)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = shape.arch(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def synthetic_tasks(
    tokenizer: PreTrainedTokenizerFast, n_features: int, examples: int, text_words: int, seed: int
) -> tuple[list[str], list[str], list[FeatureTask]]:
    """Each feature: `examples` texts of `text_words` random words, a target word in each, about a third
    active; 30% of each class held out. Returns every text and target, and the features' tasks over them."""
    rng = np.random.default_rng(seed)
    words = [w for w in tokenizer.get_vocab() if w.isalpha() and len(w) >= 4]
    contexts: list[str] = []
    targets: list[str] = []
    tasks = []
    for feature in range(n_features):
        offset = len(contexts)
        for _ in range(examples):
            text = rng.choice(words, text_words)
            contexts.append(" ".join(text))
            targets.append(str(rng.choice(text)))
        active = rng.random(examples) < 0.35
        active[:4], active[4:8] = True, False  # both classes on both sides whatever the draw
        rows = rng.permutation(examples)
        on, off = rows[active[rows]], rows[~active[rows]]
        held_on, held_off = max(1, round(0.3 * len(on))), max(1, round(0.3 * len(off)))
        heldout = np.concatenate([on[:held_on], off[:held_off]])
        tasks.append(
            FeatureTask(
                feature=feature,
                train_active=on[held_on:] + offset,
                train_inactive=off[held_off:] + offset,
                heldout=heldout + offset,
                heldout_active=active[heldout],
            )
        )
    return contexts, targets, tasks


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> float:
    """FLOP/s of an n^3 matrix product in `dtype`, best of `repeats` after a warm-up."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def step_flops(model: PreTrainedModel, disc: CausalLMDiscriminator, prefix_len: float, rows: int, fr: int) -> float:
    """The counted FLOPs of one optimisation step over `rows` (feature, restart, example) rows, `fr` of
    (feature, restart) (the formula in the module docstring)."""
    config = model.config
    d, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    slots = 1  # OptimiserConfig.label_tokens at its default (the script does not change it)
    suffix = slots + len(disc.suffix_ids)
    kept = slots  # logits at the slots before the last (for q) and at the answer
    params = non_embedding_params(model)
    linear = 4 * rows * (params * suffix + d * config.vocab_size * kept)
    context = sum(prefix_len + s + 1 for s in range(suffix))
    attention = 3 * rows * layers * 4 * heads * head_dim * context
    soft_label = 4 * fr * slots * len(disc.allowed_ids) * d
    return float(linear + attention + soft_label)


def non_embedding_params(model: torch.nn.Module) -> int:
    """Parameters of the transformer blocks and the final norm: all but the input and output embedding tables."""
    embeddings = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}  # type: ignore[operator]
    return sum(p.numel() for p in model.parameters() if id(p) not in embeddings)


def peak_memory(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {"peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2), "memory_kind": "cuda"}
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    return {"peak_memory_gib": round(kib / 2**20, 2), "memory_kind": "process max RSS (CPU)"}


def fitting_features(
    disc: CausalLMDiscriminator,
    contexts: list[str],
    targets: list[str],
    tasks: list[FeatureTask],
    config: OptimiserConfig,
    limit: int,
) -> int:
    """On a GPU, the most features (at most `limit`) whose prefix cache and step fit in 85% of the device's
    memory, from what encoding 2 features and one step over them take; elsewhere `limit`. `tasks[:2]` must
    index the first rows of `contexts`."""
    if disc.device.type != "cuda":
        return limit
    probe = min(2, len(tasks))
    rows = 1 + max(int(r) for t in tasks[:probe] for r in (*t.train_active, *t.train_inactive, *t.heldout))
    sync(disc.device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(disc.device)
    encoded = disc.encode(contexts[:rows], targets[:rows])
    sync(disc.device)
    cached = torch.cuda.memory_allocated(disc.device)
    torch.cuda.reset_peak_memory_stats(disc.device)
    one_step(disc, encoded, tasks[:probe], config)
    per_feature = (torch.cuda.max_memory_allocated(disc.device) - base) / probe  # cache and step
    del encoded
    total = torch.cuda.get_device_properties(disc.device).total_memory
    fits = int((0.85 * total - base) / per_feature)
    print(f"memory probe: {(cached - base) / probe / 2**30:.2f} GiB cache and {per_feature / 2**30:.2f} GiB in all "
          f"per feature; {fits} features fit", file=sys.stderr)  # fmt: skip
    return max(1, min(limit, fits))


def one_step(disc: CausalLMDiscriminator, encoded: Any, tasks: list[FeatureTask], config: OptimiserConfig) -> None:
    """The step's forward and backward (what the engine runs each step, without its AdamW update)."""
    n = config.examples_per_step
    # n / 2 of each class, repeated cyclically where a feature has fewer (as the engine draws with replacement)
    rows = [np.concatenate([np.resize(t.train_active, n // 2), np.resize(t.train_inactive, n // 2)]) for t in tasks]
    example = torch.from_numpy(np.stack(rows)).to(disc.device)
    target = torch.zeros(len(tasks), n, dtype=torch.bool, device=disc.device)
    target[:, : n // 2] = True
    v = torch.randn(len(tasks), config.restarts, config.label_tokens, len(disc.allowed_ids), device=disc.device)
    v.requires_grad_(True)
    loss, _, _ = objective(disc, encoded, example, target, v, config)
    torch.autograd.grad(loss.sum(), [v])
    sync(disc.device)


def timed(
    disc: CausalLMDiscriminator,
    contexts: list[str],
    targets: list[str],
    tasks: list[FeatureTask],
    config: OptimiserConfig,
) -> tuple[float, list[tuple[float, int]], int]:
    """Seconds to encode and label `tasks`; each step's end time and live feature count; failed features."""
    device = disc.device
    marks: list[tuple[float, int]] = []

    def on_step(step: int, live: int) -> None:
        sync(device)
        marks.append((time.perf_counter(), live))

    sync(device)
    start = time.perf_counter()
    used = sorted({int(r) for t in tasks for r in (*t.train_active, *t.train_inactive, *t.heldout)})
    local = {row: i for i, row in enumerate(used)}
    encoded = disc.encode([contexts[r] for r in used], [targets[r] for r in used])
    renumbered = [_renumber(task, local) for task in tasks]
    labels = optimise(disc, encoded, renumbered, config, on_step)
    sync(device)
    return time.perf_counter() - start, [(start, 0), *marks], sum(label.status != "labelled" for label in labels)


def _renumber(task: FeatureTask, local: dict[int, int]) -> FeatureTask:
    def rows(r: np.ndarray) -> np.ndarray:
        return np.array([local[int(i)] for i in r], dtype=np.int64)

    return replace(
        task, train_active=rows(task.train_active), train_inactive=rows(task.train_inactive), heldout=rows(task.heldout)
    )


def paper_loop(
    disc: CausalLMDiscriminator,
    contexts: list[str],
    targets: list[str],
    tasks: list[FeatureTask],
    config: OptimiserConfig,
) -> float:
    """Seconds to label the features one at a time, one restart at a time (each feature's prefixes cached once)."""
    sync(disc.device)
    start = time.perf_counter()
    for task in tasks:
        used = sorted({int(r) for r in (*task.train_active, *task.train_inactive, *task.heldout)})
        local = {row: i for i, row in enumerate(used)}
        encoded = disc.encode([contexts[r] for r in used], [targets[r] for r in used])
        for restart in range(config.restarts):
            single = replace(config, restarts=1, seed=config.seed + restart)
            optimise(disc, encoded, [_renumber(task, local)], single)
    sync(disc.device)
    return time.perf_counter() - start


def profile_step(
    disc: CausalLMDiscriminator, encoded: Any, tasks: list[FeatureTask], config: OptimiserConfig, rows: int
) -> str:
    """torch.profiler's table (by total device time, else CPU time) of one optimisation step's forward and
    backward over the batch."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if disc.device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        one_step(disc, encoded, tasks, config)
    key = "cuda_time_total" if disc.device.type == "cuda" else "cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument(
        "--features",
        default="auto",
        help="F, features per batch; auto: the engine's default (64), fewer where one step would not fit in "
        "85%% of the GPU's memory",
    )
    parser.add_argument("--steps", type=int, default=OptimiserConfig().max_steps, help="steps every restart runs")
    parser.add_argument("--restarts", type=int, default=OptimiserConfig().restarts)
    parser.add_argument("--examples-per-step", type=int, default=OptimiserConfig().examples_per_step)
    parser.add_argument("--examples", type=int, default=48, help="examples per feature")
    parser.add_argument("--text-words", type=int, default=64, help="words (= tokens) per example text")
    parser.add_argument("--loop-features", type=int, default=2, help="features the paper loop labels")
    parser.add_argument("--matmul", type=int, default=0, help="n of the n^3 peak product (0: 8192 GPU, 1024 CPU)")
    parser.add_argument("--profile", default=None, help="write torch.profiler's table of one step to this file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    shape = SHAPES[args.shape]
    # On a CPU, glibc's default of unmapping freed activations makes each step page-fault them anew (runtime.py).
    allocator_tuned = keep_freed_memory() if args.device == "cpu" else False
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    begun = time.perf_counter()
    tokenizer = build_tokenizer(shape)
    model = build_model(shape, device, dtype)
    disc = CausalLMDiscriminator(
        model,
        tokenizer,
        CausalLMConfig(model=f"random:{args.shape}", dtype=args.dtype, device=str(device)),
    )
    built = time.perf_counter() - begun
    # converge_prob above every reachable probability: every restart runs all its steps in both methods.
    config = OptimiserConfig(
        restarts=args.restarts,
        max_steps=args.steps,
        examples_per_step=args.examples_per_step,
        converge_prob=1.0,
        seed=args.seed,
    )
    limit = 64 if args.features == "auto" else int(args.features)
    contexts, targets, tasks = synthetic_tasks(tokenizer, limit, args.examples, args.text_words, args.seed)
    prefix_lens = [len(disc.prompt_ids(c, t)[0]) for c, t in zip(contexts[:64], targets[:64], strict=True)]
    warm = replace(config, max_steps=2)
    timed(disc, contexts, targets, tasks[:2], warm)  # warm-up: lazy initialisation, kernels, allocator
    if args.features == "auto":
        limit = fitting_features(disc, contexts, targets, tasks, config, limit)
    tasks = tasks[:limit]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    cfg = model.config
    common = {
        "shape": args.shape,
        "model_type": cfg.model_type,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "intermediate_size": cfg.intermediate_size,
        "num_attention_heads": cfg.num_attention_heads,
        "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
        "vocab_size": cfg.vocab_size,
        "non_embedding_params": non_embedding_params(model),
        "allowed_tokens": len(disc.allowed_ids),
        "prefix_tokens_mean": round(float(np.mean(prefix_lens)), 1),
        "suffix_tokens": 1 + len(disc.suffix_ids),
        "features": limit,
        "restarts": args.restarts,
        "steps": args.steps,
        "examples_per_step": args.examples_per_step,
        "dtype": args.dtype,
        "device": str(device),
        "processor": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "allocator_tuned": allocator_tuned,
        "torch": torch.__version__,
        "transformers": sys.modules["transformers"].__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    emit: Callable[[dict[str, Any]], None] = lambda line: print(json.dumps({**line, **common}), flush=True)  # noqa: E731
    emit({"measurement": "setup", "build_seconds": round(built, 2)})

    n = args.matmul or (8192 if device.type == "cuda" else 1024)
    peak = matmul_peak(device, dtype, n, repeats=10 if device.type == "cuda" else 3)
    emit({"measurement": "matmul_peak", "n": n, "flops_per_s": peak})

    seconds, marks, failed = timed(disc, contexts, targets, tasks, config)
    prefix_len = float(np.mean(prefix_lens))
    step_times = [b[0] - a[0] for a, b in itertools.pairwise(marks[1:])]  # step 1 also encodes
    counted = [step_flops(model, disc, prefix_len, live * args.restarts * args.examples_per_step, live * args.restarts)
               for _, live in marks[2:]]  # fmt: skip
    achieved = sum(counted) / sum(step_times) if step_times else float("nan")
    rate = limit / seconds
    emit(
        {
            "measurement": "batched_engine",
            "seconds": seconds,
            "features_per_s": rate,
            "failed_features": failed,
            "step_seconds_median": float(np.median(step_times)) if step_times else None,
            "step_flops": counted[0] if counted else None,
            "achieved_flops_per_s": achieved,
            "mfu": achieved / peak,
            **peak_memory(device),
        }
    )
    loop_tasks = tasks[: args.loop_features]
    loop_seconds = paper_loop(disc, contexts, targets, loop_tasks, config)
    loop_rate = len(loop_tasks) / loop_seconds
    emit(
        {
            "measurement": "paper_loop",
            "seconds": loop_seconds,
            "features_per_s": loop_rate,
            "loop_features": len(loop_tasks),
        }
    )
    emit({"measurement": "ratio", "batched_features_per_s": rate, "loop_features_per_s": loop_rate,
          "ratio": rate / loop_rate})  # fmt: skip
    if args.profile:
        used = sorted({int(r) for t in tasks for r in (*t.train_active, *t.train_inactive, *t.heldout)})
        local = {row: i for i, row in enumerate(used)}
        encoded = disc.encode([contexts[r] for r in used], [targets[r] for r in used])
        table = profile_step(disc, encoded, [_renumber(t, local) for t in tasks], config, rows=40)
        with open(args.profile, "w", encoding="utf-8") as out:
            out.write(f"# one optimisation step (forward + backward w.r.t. inputs), {args.shape}, F={limit}\n")
            out.write(table)
        emit({"measurement": "profile", "written": args.profile})


if __name__ == "__main__":
    main()
