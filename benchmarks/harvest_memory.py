"""Peak memory of harvesting does not grow with the corpus: 1x and 8x the corpus, each in a fresh process.

Subject: a tiny random GPT-2 (4 layers, width 64, MiniLM's 30,522-token WordPiece vocabulary) with a
random sae-lens SAE of `--d-sae` latents at blocks.1.hook_resid_post; corpus: the first `--lines`
WordNet glosses, and 8 times as many. Each harvest runs in its own Python process; its peak RSS
(getrusage ru_maxrss) is printed as JSON, then the growth from 1x to 8x.

    python benchmarks/harvest_memory.py [--lines 2500] [--d-sae 8192]
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(workdir: Path, corpus: Path, out: Path) -> None:
    from labeler.harvest.config import HarvestConfig
    from labeler.harvest.pipeline import harvest

    started = time.perf_counter()
    manifest = harvest(
        HarvestConfig(
            sae=str(workdir / "sae"), model=str(workdir / "gpt2"), corpus=str(corpus), out=str(out), device="cpu"
        )
    )
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "tokens": manifest.tokens,
                "exemplar_rows": manifest.exemplar_rows,
                "seconds": round(time.perf_counter() - started, 1),
                "peak_rss_mib": round(peak_kib / 1024, 1),
            }
        )
    )


def build(workdir: Path, lines: int, d_sae: int) -> None:
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from labeler.toys.demo_sae import CORPUS, minilm_dir

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=64, n_layer=4, n_head=4)
    ).save_pretrained(workdir / "gpt2")
    tokenizer.save_pretrained(workdir / "gpt2")
    sae = StandardSAE(
        StandardSAEConfig(d_in=64, d_sae=d_sae, metadata=SAEMetadata(hook_name="blocks.1.hook_resid_post"))
    )
    with torch.no_grad():
        sae.b_enc.fill_(-0.1)
    sae.save_model(workdir / "sae")
    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        text = [next(f) for _ in range(lines * 8)]
    (workdir / "1x.txt").write_text("".join(text[:lines]))
    (workdir / "8x.txt").write_text("".join(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=2500)
    parser.add_argument("--d-sae", type=int, default=8192)
    parser.add_argument("--child", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        build(workdir, args.lines, args.d_sae)
        for size in ("1x", "8x"):
            command = [
                sys.executable,
                __file__,
                "--child",
                str(workdir),
                str(workdir / f"{size}.txt"),
                str(workdir / f"out-{size}"),
            ]
            line = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            results[size] = json.loads(line)
            print(json.dumps({"corpus": size, "d_sae": args.d_sae, **results[size], "machine": platform.machine()}))
    growth = results["8x"]["peak_rss_mib"] / results["1x"]["peak_rss_mib"] - 1
    tokens = results["8x"]["tokens"] / results["1x"]["tokens"]
    print(
        json.dumps(
            {"tokens_ratio": round(tokens, 2), "peak_rss_growth": round(growth, 4), "within_10pct": growth <= 0.10}
        )
    )


if __name__ == "__main__":
    main()
