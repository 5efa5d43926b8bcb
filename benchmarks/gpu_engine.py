"""Labelling throughput at a real model's shape: the shipping default beside the paper's method, in one run.

Random-weight models built from transformers' config classes with the published shapes (no download; speed
does not depend on the weights), a word-level tokenizer built here with as many tokens as the model has
embedding rows (the special tokens of the model's chat template included), and synthetic exemplars: texts of
64 words, the paper's prompt in the model's chat template. Three methods label the same features:

    default     the causal-LM kind's default optimiser, `default_optimiser("hf")` (what an `hf:` run uses):
                discrete search and its pick, batched by the engine (labeler.optimise.engine.optimise)
    paper       the paper's soft label, `OptimiserConfig()`, batched by the same engine
    paper_loop  the paper's soft label one feature and one restart at a time, its prefixes encoded once per
                feature (the paper's loop)

Every restart runs every step (early stopping off: converge_prob 1, converge_patience above the steps), so a
step's work does not depend on the weights. `--steps` below the optimiser's max_steps times fewer steps; the
rate at max_steps scales the step phase: features / (seconds - step_seconds + step_seconds * max_steps / steps).
That rate (`features_per_s_full`) is what `labeler plan` reads, for the optimiser recorded on its line.

Forward tokens and FLOPs are counted, not measured: for every forward of the model, with T real tokens run
(rows x positions; a left-padded prefix counts its real tokens), K positions whose logits are kept and ctx the
keys a token attends to (its prefix's real tokens and the earlier tokens of its own row),

    c * (P * T + d * V_model * K) + a * layers * 4 * heads * head_dim * sum(ctx)

with c = 2, a = 1 without grad and c = 4, a = 3 with grad (the backward with respect to the inputs only: frozen
weights, no weight gradients; attention's backward also forms dQ, dK and dV); P is the non-embedding parameter
count. Each optimisation step adds 4 * F * R * L * V_allowed * d for the label's product with the label
embedding table (p @ E, or the one-hot's in discrete search). MFU = counted FLOPs per second / the matmul rate
measured in the same run (an 8192^3 product on a GPU; 1024^3 on a CPU). Peak memory is per method: the CUDA
allocator's peak, or on a CPU the process's peak resident set since the method started (Linux's VmHWM, reset).

    python benchmarks/gpu_engine.py --shape gemma-2-2b --device cuda [--steps 5] [--profile OUT.txt]
    python benchmarks/gpu_engine.py --shape tiny            # seconds on a CPU (the CI test)

Prints one JSON line per measurement (setup, matmul peak, one per method, the comparison, the profile) and,
on stderr, its progress and the methods side by side. It imports only torch, transformers, tokenizers, numpy
and the engine's modules (no Ray, no pyarrow, no sae-lens), so it runs from a source tree on a machine without
the project installed.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
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
from labeler.discriminators.config import default_optimiser
from labeler.discriminators.prefix_attention import SharedPrefix
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


Count = int | float | torch.Tensor
"""A count: a number, or a 0-d tensor on the model's device (what the inputs' masks give, read without a sync)."""


class Tally:
    """A sum of counts, numbers added at once and device tensors kept until it is read (one sync then), so counting
    does not stall the device between the kernels being timed."""

    def __init__(self) -> None:
        self.number = 0.0
        self.pending: list[torch.Tensor] = []

    def add(self, count: Count) -> None:
        if isinstance(count, torch.Tensor):
            self.pending.append(count.double())
        else:
            self.number += count

    def value(self) -> float:
        if self.pending:
            self.number += float(torch.stack(self.pending).sum())
            self.pending = []
        return self.number


class ModelWork:
    """What every forward of a model computes, counted from its inputs: tokens (with grad and in all) and FLOPs by
    the formula of the module docstring (label products are added by the caller, `add`). It knows nothing about
    timing; `reset` starts a new count."""

    def __init__(self, model: PreTrainedModel) -> None:
        config = model.config.get_text_config()
        self.params = non_embedding_params(model)
        self.hidden = int(config.hidden_size)
        self.vocab = int(config.vocab_size)
        heads = int(config.num_attention_heads)
        head_dim = int(getattr(config, "head_dim", None) or self.hidden // heads)
        self.attention = int(config.num_hidden_layers) * 4 * heads * head_dim
        """FLOPs of one (query, key) pair over all layers and heads, forward: QK^T and the weighted sum of V."""
        self._tokens, self._grad_tokens, self._flops = Tally(), Tally(), Tally()
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    @property
    def tokens(self) -> int:
        return round(self._tokens.value())

    @property
    def grad_tokens(self) -> int:
        return round(self._grad_tokens.value())

    @property
    def flops(self) -> float:
        return self._flops.value()

    def reset(self) -> None:
        self._tokens, self._grad_tokens, self._flops = Tally(), Tally(), Tally()

    def add(self, flops: float) -> None:
        self._flops.add(flops)

    def _count(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        inputs = kwargs.get("input_ids", kwargs.get("inputs_embeds", args[0] if args else None))
        if inputs is None:
            raise TypeError(f"{type(module).__name__} was called with neither input_ids nor inputs_embeds")
        rows, width = int(inputs.shape[0]), int(inputs.shape[1])
        tokens, context = call_tokens(rows, width, kwargs.get("shared_prefix"), kwargs.get("attention_mask"))
        keep = kwargs.get("logits_to_keep", 0)
        kept = rows * (len(keep) if isinstance(keep, torch.Tensor) else int(keep) or width)
        grad = torch.is_grad_enabled()
        linear, attention = (4, 3) if grad else (2, 1)
        self._flops.add(linear * self.params * tokens)
        self._flops.add(linear * self.hidden * self.vocab * kept)
        self._flops.add(attention * self.attention * context)
        self._tokens.add(tokens)
        if grad:
            self._grad_tokens.add(tokens)


def call_tokens(rows: int, width: int, prefix: SharedPrefix | None, mask: torch.Tensor | None) -> tuple[Count, Count]:
    """(real tokens run, the sum over them of the keys each attends to) of one forward of `rows` x `width` inputs:
    after a shared prefix (each row attends to its group's real prefix tokens and its own earlier tokens), over a
    left-padded batch (only its real tokens), or plain. Counts read from a mask stay on its device."""
    own = rows * width * (width + 1) / 2  # each token's own row up to it
    if prefix is not None:
        prefix_tokens = prefix.prefix_valid.sum(dtype=torch.float64) * prefix.group_size  # over the batch's rows
        return rows * width, width * prefix_tokens + own
    if mask is not None:
        real = mask.sum(1, dtype=torch.float64)
        return real.sum(), (real * (real + 1) / 2).sum()
    return rows * width, own


def non_embedding_params(model: torch.nn.Module) -> int:
    """Parameters of the transformer blocks and the final norm: all but the input and output embedding tables."""
    embeddings = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}  # type: ignore[operator]
    return sum(p.numel() for p in model.parameters() if id(p) not in embeddings)


def label_product_flops(disc: CausalLMDiscriminator, fr: int, slots: int) -> float:
    """FLOPs of one step's label products, forward and backward: `fr` (feature, restart) pairs of `slots` slots,
    each a distribution over the allowed tokens times their embeddings."""
    return float(4 * fr * slots * len(disc.allowed_ids) * disc.label_embeddings.shape[1])


@contextmanager
def peak_memory(device: torch.device, into: dict[str, Any]) -> Iterator[None]:
    """Fill `into` with the peak memory of what runs inside: the CUDA allocator's peak, or on a CPU the process's
    peak resident set (Linux's VmHWM, reset at entry; where it cannot be reset, the process's lifetime peak)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield
        into |= {"peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3), "memory_kind": "cuda"}
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
        kind = "process peak resident set since the method started (CPU)"
    except OSError:
        kind = "process max RSS since it started (CPU)"
    yield
    status = Path("/proc/self/status")
    found = re.search(r"VmHWM:\s+(\d+) kB", status.read_text()) if status.exists() else None
    kib = int(found.group(1)) if found else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    into |= {"peak_memory_gib": round(kib / 2**20, 3), "memory_kind": kind}


def fitting_features(
    disc: CausalLMDiscriminator,
    contexts: list[str],
    targets: list[str],
    tasks: list[FeatureTask],
    config: OptimiserConfig,
    limit: int,
) -> int:
    """On a GPU, the most features (at most `limit`) whose prefix cache and step fit in 85% of the device's
    memory, from what encoding 2 features and one gradient step over them take (discrete search's scoring passes
    run without grad, in batches of at most swap_batch rows); elsewhere `limit`. `tasks[:2]` must index the
    first rows of `contexts`."""
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
    progress(f"memory probe: {(cached - base) / probe / 2**30:.2f} GiB cache and {per_feature / 2**30:.2f} GiB in "
             f"all per feature; {fits} features fit")  # fmt: skip
    return max(1, min(limit, fits))


def one_step(disc: CausalLMDiscriminator, encoded: Any, tasks: list[FeatureTask], config: OptimiserConfig) -> None:
    """The soft label's forward and backward (what the engine runs each step, without its AdamW update)."""
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


def progress(message: str) -> None:
    print(f"gpu_engine: {message}", file=sys.stderr, flush=True)


@dataclass
class Clock:
    """The timed work of one method: its optimise calls' step phases, their step counts and failed features."""

    disc: CausalLMDiscriminator
    work: ModelWork
    name: str
    step_seconds: float = 0.0
    steps: list[int] = field(default_factory=list)
    """Steps each optimise call ran."""
    failed: int = 0
    _said: float = field(default_factory=time.perf_counter)

    def optimise(self, encoded: Any, tasks: list[FeatureTask], config: OptimiserConfig) -> None:
        """Label `tasks`: the step phase (from the call to its last step) is timed, each step's label products
        counted, and progress said at most every 10 seconds."""
        device = self.disc.device
        marks: list[float] = []

        def on_step(step: int, live: int) -> None:
            self.work.add(label_product_flops(self.disc, live * config.restarts, config.label_tokens))
            sync(device)
            marks.append(time.perf_counter())
            if marks[-1] - self._said > 10:
                self._said = marks[-1]
                progress(f"{self.name}: step {step} of {config.max_steps}, {live} features")

        sync(device)
        begun = time.perf_counter()
        labels = optimise(self.disc, encoded, tasks, config, on_step)
        self.step_seconds += (marks[-1] if marks else begun) - begun
        self.steps.append(len(marks))
        self.failed += sum(label.status != "labelled" for label in labels)


def encode_for(
    disc: CausalLMDiscriminator, contexts: list[str], targets: list[str], tasks: list[FeatureTask]
) -> tuple[Any, list[FeatureTask]]:
    """The prefixes the tasks use, encoded, and the tasks renumbered to their rows."""
    used = sorted({int(r) for t in tasks for r in (*t.train_active, *t.train_inactive, *t.heldout)})
    local = {row: i for i, row in enumerate(used)}
    encoded = disc.encode([contexts[r] for r in used], [targets[r] for r in used])
    return encoded, [_renumber(task, local) for task in tasks]


def _renumber(task: FeatureTask, local: dict[int, int]) -> FeatureTask:
    def rows(r: np.ndarray) -> np.ndarray:
        return np.array([local[int(i)] for i in r], dtype=np.int64)

    return replace(
        task, train_active=rows(task.train_active), train_inactive=rows(task.train_inactive), heldout=rows(task.heldout)
    )


def batched(
    clock: Clock, contexts: list[str], targets: list[str], tasks: list[FeatureTask], config: OptimiserConfig
) -> None:
    """Encode every task's prefixes, then label them all in the engine's batch."""
    encoded, renumbered = encode_for(clock.disc, contexts, targets, tasks)
    clock.optimise(encoded, renumbered, config)


def loop(
    clock: Clock, contexts: list[str], targets: list[str], tasks: list[FeatureTask], config: OptimiserConfig
) -> None:
    """The paper's loop: one feature at a time (its prefixes encoded once), one restart at a time."""
    for task in tasks:
        encoded, (renumbered,) = encode_for(clock.disc, contexts, targets, [task])
        for restart in range(config.restarts):
            clock.optimise(encoded, [renumbered], replace(config, restarts=1, seed=config.seed + restart))


@dataclass(frozen=True)
class Method:
    """One measured method: its name, its optimiser (the one whose rate is measured) and how it runs."""

    name: str
    optimiser: OptimiserConfig
    runner: Callable[[Clock, list[str], list[str], list[FeatureTask], OptimiserConfig], None]
    batched: bool


def methods(restarts: int | None, examples_per_step: int | None) -> list[Method]:
    """The default first (the figure `labeler plan` needs, should time run out), then the paper's two; a given
    restarts or examples_per_step applies to all three (and so makes each another optimiser than its default)."""
    given: dict[str, Any] = {
        key: value
        for key, value in (("restarts", restarts), ("examples_per_step", examples_per_step))
        if value is not None
    }
    paper = replace(OptimiserConfig(), **given)
    return [
        Method("default", replace(default_optimiser("hf"), **given), batched, True),
        Method("paper", paper, batched, True),
        Method("paper_loop", paper, loop, False),
    ]


def run_config(optimiser: OptimiserConfig, steps: int, seed: int) -> OptimiserConfig:
    """The optimiser as timed: `steps` steps for every restart (no early stopping) and the run's seed."""
    return replace(optimiser, max_steps=steps, converge_prob=1.0, converge_patience=steps + 1, seed=seed)


def over_paper(optimiser: OptimiserConfig) -> dict[str, Any]:
    """The settings in which `optimiser` differs from the paper's soft label (`OptimiserConfig()`)."""
    paper = asdict(OptimiserConfig())
    return {key: value for key, value in asdict(optimiser).items() if paper[key] != value}


def measure(
    method: Method,
    clock: Clock,
    contexts: list[str],
    targets: list[str],
    tasks: list[FeatureTask],
    steps: int,
    seed: int,
    peak: float,
) -> dict[str, Any]:
    """Run one method on `tasks` and return its line: time, rates, tokens, FLOPs, MFU and peak memory."""
    config = run_config(method.optimiser, steps, seed)
    device = clock.disc.device
    clock.work.reset()
    memory: dict[str, Any] = {}
    progress(f"{method.name}: {len(tasks)} features, {config.restarts} restarts x {steps} steps")
    with peak_memory(device, memory):
        sync(device)
        begun = time.perf_counter()
        method.runner(clock, contexts, targets, tasks, config)
        sync(device)
        seconds = time.perf_counter() - begun
    if any(count != steps for count in clock.steps):
        raise RuntimeError(f"{method.name}: an optimise call ran {clock.steps} steps, not {steps}: early stopping")
    full = seconds - clock.step_seconds + clock.step_seconds * method.optimiser.max_steps / steps
    achieved = clock.work.flops / seconds
    line = {
        "measurement": "method",
        "method": method.name,
        "batched": method.batched,
        "optimiser": asdict(method.optimiser),
        "over_paper": over_paper(method.optimiser),
        "features": len(tasks),
        "steps": steps,
        "max_steps": method.optimiser.max_steps,
        "seconds": seconds,
        "step_seconds": clock.step_seconds,
        "features_per_s": len(tasks) / seconds,
        "features_per_s_full": len(tasks) / full,
        "failed_features": clock.failed,
        "forward_tokens": clock.work.tokens,
        "grad_tokens": clock.work.grad_tokens,
        "flops": clock.work.flops,
        "achieved_flops_per_s": achieved,
        "mfu": achieved / peak,
        **memory,
    }
    progress(f"{method.name}: {seconds:.1f} s, {line['features_per_s_full']:.4g} features/s at {config.max_steps} "
             f"of {method.optimiser.max_steps} steps scaled to all, MFU {line['mfu']:.2%}")  # fmt: skip
    return line


def side_by_side(lines: list[dict[str, Any]]) -> str:
    """The methods' figures as a Markdown table, one row each (the optimiser as its settings over the paper's)."""
    rows = [
        "| method | optimiser (settings over the paper's) | features/s at max_steps | forward tokens / feature "
        "| FLOPs / feature | MFU | peak memory GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for line in lines:
        settings = ", ".join(f"{k}={v}" for k, v in line["over_paper"].items()) or "the paper's soft label"
        rows.append(
            f"| {line['method']} | {settings} | {line['features_per_s_full']:.4g} "
            f"| {line['forward_tokens'] / line['features']:.4g} | {line['flops'] / line['features']:.4g} "
            f"| {line['mfu']:.3%} | {line['peak_memory_gib']} |"
        )
    return "\n".join(rows)


def profile(
    disc: CausalLMDiscriminator,
    contexts: list[str],
    targets: list[str],
    tasks: list[FeatureTask],
    default: OptimiserConfig,
    paper: OptimiserConfig,
    rows: int,
) -> str:
    """torch.profiler's tables (by total device time, else CPU time): the default optimiser's first step and its
    pick on at most 8 features, and one step of the paper's soft label (forward and backward) over all of them."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if disc.device.type == "cuda" else [])
    key = "cuda_time_total" if disc.device.type == "cuda" else "cpu_time_total"
    encoded, renumbered = encode_for(disc, contexts, targets, tasks)
    few = renumbered[:8]
    with profile(activities=activities, record_shapes=True) as default_run:
        optimise(disc, encoded, few, replace(default, max_steps=1))
        sync(disc.device)
    with profile(activities=activities, record_shapes=True) as paper_step:
        one_step(disc, encoded, renumbered, paper)
    return (
        f"## default: one step and the pick, {len(few)} features\n"
        f"{default_run.key_averages().table(sort_by=key, row_limit=rows)}\n\n"
        f"## paper: one step's forward and backward, {len(renumbered)} features\n"
        f"{paper_step.key_averages().table(sort_by=key, row_limit=rows)}\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument(
        "--features",
        default="auto",
        help="F, features per batch; auto: --max-features, fewer where one step would not fit in 85%% of the GPU's "
        "memory",
    )
    parser.add_argument("--max-features", type=int, default=64, help="F at most with --features auto")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps every restart runs (default: each optimiser's max_steps); fewer are scaled to max_steps",
    )
    parser.add_argument("--restarts", type=int, default=None, help="restarts (default: each optimiser's own)")
    parser.add_argument("--examples-per-step", type=int, default=None, help="default: each optimiser's own")
    parser.add_argument("--examples", type=int, default=48, help="examples per feature")
    parser.add_argument("--text-words", type=int, default=64, help="words (= tokens) per example text")
    parser.add_argument("--loop-features", type=int, default=2, help="features the paper loop labels")
    parser.add_argument("--matmul", type=int, default=0, help="n of the n^3 peak product (0: 8192 GPU, 1024 CPU)")
    parser.add_argument("--profile", default=None, help="write torch.profiler's tables to this file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if args.features != "auto" and not (args.features.isdigit() and int(args.features) >= 1):
        parser.error(f"--features takes auto or a positive number, got {args.features!r}")
    if args.max_features < 1:
        parser.error(f"--max-features must be at least 1, got {args.max_features}")

    shape = SHAPES[args.shape]
    # On a CPU, glibc's default of unmapping freed activations makes each step page-fault them anew (runtime.py).
    allocator_tuned = keep_freed_memory() if args.device == "cpu" else False
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    begun = time.perf_counter()
    progress(f"{args.shape}: building the tokenizer and a random-weight model on {device}")
    tokenizer = build_tokenizer(shape)
    model = build_model(shape, device, dtype)
    disc = CausalLMDiscriminator(
        model,
        tokenizer,
        CausalLMConfig(model=f"random:{args.shape}", dtype=args.dtype, device=str(device)),
    )
    work = ModelWork(model)
    built = time.perf_counter() - begun
    measured = methods(args.restarts, args.examples_per_step)
    limit = args.max_features if args.features == "auto" else int(args.features)
    contexts, targets, tasks = synthetic_tasks(tokenizer, limit, args.examples, args.text_words, args.seed)
    prefix_lens = [len(disc.prompt_ids(c, t)[0]) for c, t in zip(contexts[:64], targets[:64], strict=True)]
    progress(f"{args.shape}: built in {built:.1f} s; warming up")
    for method in measured[:2]:  # lazy initialisation, kernels, allocator; both searches' code paths
        warm = Clock(disc, work, f"warm-up {method.name}")
        batched(warm, contexts, targets, tasks[:2], run_config(method.optimiser, 2, args.seed))
    if args.features == "auto":
        limit = fitting_features(disc, contexts, targets, tasks, run_config(measured[1].optimiser, 1, 0), limit)
    tasks = tasks[:limit]

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
        "non_embedding_params": work.params,
        "allowed_tokens": len(disc.allowed_ids),
        "prefix_tokens_mean": round(float(np.mean(prefix_lens)), 1),
        "suffix_tokens": 1 + len(disc.suffix_ids),
        "examples": args.examples,
        "text_words": args.text_words,
        "seed": args.seed,
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
    emit({"measurement": "setup", "build_seconds": round(built, 2), "batch_features": limit})

    n = args.matmul or (8192 if device.type == "cuda" else 1024)
    peak = matmul_peak(device, dtype, n, repeats=10 if device.type == "cuda" else 3)
    emit({"measurement": "matmul_peak", "n": n, "flops_per_s": peak})

    lines = []
    for method in measured:
        subset = tasks if method.batched else tasks[: args.loop_features]
        steps = args.steps or method.optimiser.max_steps
        line = measure(method, Clock(disc, work, method.name), contexts, targets, subset, steps, args.seed, peak)
        emit(line)
        lines.append(line)
    rate = {line["method"]: line["features_per_s_full"] for line in lines}
    emit(
        {
            "measurement": "comparison",
            **{f"{name}_features_per_s_full": value for name, value in rate.items()},
            "default_over_paper": rate["default"] / rate["paper"],
            "paper_over_loop": rate["paper"] / rate["paper_loop"],
            "default_over_loop": rate["default"] / rate["paper_loop"],
        }
    )
    print(f"{args.shape} on {common['processor']}, {limit} features per batch:\n{side_by_side(lines)}", file=sys.stderr)
    if args.profile:
        progress(f"{args.shape}: profiling")
        steps_default = run_config(measured[0].optimiser, 1, args.seed)
        table = profile(disc, contexts, targets, tasks, steps_default, run_config(measured[1].optimiser, 1, 0), 40)
        with open(args.profile, "w", encoding="utf-8") as out:
            out.write(f"# torch.profiler, {args.shape}, {common['processor']}, F={limit}\n\n{table}")
        emit({"measurement": "profile", "written": args.profile})


if __name__ == "__main__":
    main()
