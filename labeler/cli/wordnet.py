"""`labeler wordnet {category-nouns|glosses|taxonomy} WORDNET_DIR OUT`: rebuild the WordNet data that labeler ships
(labeler/discriminators/wordnet.py) from Debian's wordnet-base. For maintainers; users never need it."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labeler.cli.errors import UsageError
from labeler.discriminators.wordnet import write_category_nouns, write_glosses, write_taxonomy

BUILDERS: dict[str, tuple[Callable[[Path, Path], int], str]] = {
    "category-nouns": (write_category_nouns, "the category nouns (labeler/data/category_nouns.txt)"),
    "glosses": (write_glosses, "the demo corpus of glosses (labeler/data/wordnet_glosses.txt.gz)"),
    "taxonomy": (write_taxonomy, "the noun taxonomy of the testbed (labeler/data/taxonomy.tsv.gz)"),
}


def add_parser(commands: Any) -> None:
    wordnet = commands.add_parser(
        "wordnet",
        help="rebuild the packaged WordNet data from wordnet-base (maintainers)",
        description="Rebuild one of the WordNet files labeler ships, from the data files of Debian's wordnet-base "
        "(apt install wordnet-base; WORDNET_DIR is usually /usr/share/wordnet).",
    )
    wordnet.add_argument("what", choices=sorted(BUILDERS), help="which file to build")
    wordnet.add_argument("wordnet_dir", metavar="WORDNET_DIR", type=Path, help="folder of WordNet's data.* files")
    wordnet.add_argument("out", metavar="OUT", type=Path, help="the file to write")
    wordnet.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    build, what = BUILDERS[args.what]
    if not (args.wordnet_dir / "data.noun").is_file():
        raise UsageError(f"{args.wordnet_dir} has no data.noun; give wordnet-base's folder, e.g. /usr/share/wordnet")
    count = build(args.wordnet_dir, args.out)
    print(f"{count} lines of {what} -> {args.out}")
    return 0
