"""The `labeler` command line: the only place that parses arguments and prints progress.

One module per command group: labelling.py (`label`, `run`: the only place that starts Ray), harvest.py,
importing.py, store.py (`query`, `export`, `report`), score.py, upload.py, plan.py, demo.py, testbed.py, wordnet.py;
options.py generates the config flags, progress.py the progress bars, errors.py and storage_errors.py the messages.
"""

from __future__ import annotations

import argparse
import sys

from labeler import __version__
from labeler.cli import demo, harvest, importing, labelling, plan, score, store, testbed, upload, wordnet
from labeler.cli.errors import UsageError
from labeler.cli.storage_errors import storage_error_message
from labeler.errors import InputError

__all__ = ["UsageError", "build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        try:
            return int(args.run(args))
        except Exception as err:  # botocore's own errors (no credentials, a dead endpoint) through s3fs
            message = storage_error_message(err, sys.argv[1:] if argv is None else argv)
            if message is None:
                raise
            raise UsageError(message) from err
    except (UsageError, InputError) as err:  # a ValueError that is no InputError is a bug: its traceback shows
        print(f"labeler: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a file or folder that cannot be read or written; storage errors were retried already
        print(f"labeler: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("labeler: interrupted; parts written so far are complete and kept", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labeler", description="Label sparse-autoencoder features by token-space gradient descent."
    )
    parser.add_argument("--version", action="version", version=f"labeler {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    labelling.add_parsers(commands)
    demo.add_parser(commands)
    store.add_parser(commands)
    harvest.add_parser(commands)
    upload.add_parser(commands)
    importing.add_parser(commands)
    score.add_parser(commands)
    plan.add_parser(commands)
    testbed.add_parser(commands)
    wordnet.add_parser(commands)
    return parser
