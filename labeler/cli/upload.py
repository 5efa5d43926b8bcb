"""`labeler upload neuronpedia RUN_URL --model-id M --source S`: a run's labels, densities and top
activations sent to Neuronpedia (labeler/store/neuronpedia_upload.py); the API key from
NEURONPEDIA_API_KEY only."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from labeler.cli.errors import UsageError


def add_parser(commands: Any) -> None:
    upload = commands.add_parser("upload", help="upload a run's labels to another service (Neuronpedia)")
    targets = upload.add_subparsers(dest="target", required=True, metavar="TARGET")
    neuronpedia = targets.add_parser(
        "neuronpedia",
        help="upload labels, densities and top activations to a Neuronpedia source",
        description="Upload every labelled feature of the run at RUN_URL (a folder or s3://bucket/prefix) to "
        "Neuronpedia's source S of model M through Neuronpedia's Python client (pip install neuronpedia), 128 "
        "features per request. The API key is read from the environment variable NEURONPEDIA_API_KEY only.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    neuronpedia.add_argument("run_url", metavar="RUN_URL", help="the run folder or s3://bucket/prefix")
    neuronpedia.add_argument("--model-id", required=True, help="Neuronpedia modelId, e.g. gpt2-small")
    neuronpedia.add_argument("--source", required=True, help="Neuronpedia source id, e.g. 6-res-jb")
    neuronpedia.add_argument(
        "--top-activations", type=int, default=20, help="top exemplars uploaded per feature as its activations"
    )
    add_model_name_flag(neuronpedia)
    neuronpedia.set_defaults(run=run_neuronpedia)


def add_model_name_flag(parser: argparse.ArgumentParser) -> None:
    """--model-name SPEC=NAME: the published name of a model the run names by a folder (export and upload)."""
    parser.add_argument(
        "--model-name",
        action="append",
        default=[],
        metavar="SPEC=NAME",
        help="the published name of a model the run names by a folder of this machine (its discriminator, a judge), "
        "e.g. hf:/models/gemma=google/gemma-2-2b; repeatable. Services get names, never local paths (minilm and "
        "folders of the Hugging Face cache are named without it)",
    )


def model_names_from(args: argparse.Namespace) -> dict[str, str]:
    """{SPEC: NAME} of the --model-name flags."""
    names = {}
    for item in args.model_name:
        spec, sep, name = item.rpartition("=")
        if not sep or not spec or not name.strip():
            raise UsageError(f"--model-name takes SPEC=NAME, e.g. hf:/models/gemma=google/gemma-2-2b; got {item!r}")
        names[spec] = name.strip()
    return names


def run_neuronpedia(args: argparse.Namespace) -> int:
    from labeler.store.dataset import read_runs
    from labeler.store.neuronpedia_upload import api_key_from_environment, feature_uploads, upload_features

    api_key = api_key_from_environment()  # before reading the run: a missing key fails at once
    features = feature_uploads(read_runs([args.run_url]), args.top_activations, model_names_from(args))

    def progress(sent: int, total: int) -> None:
        print(f"batch {sent}/{total} uploaded", file=sys.stderr)

    batches = upload_features(features, args.model_id, args.source, api_key, on_batch=progress)
    print(f"uploaded {len(features)} features in {batches} batch(es) to {args.model_id}/{args.source}", file=sys.stderr)
    return 0
