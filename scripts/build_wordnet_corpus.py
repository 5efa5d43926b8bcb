"""Build the demo corpus from Debian's WordNet 3.0 database (package wordnet-base), once.

Run on a machine with `apt-get install -y wordnet-base`; the result is committed as
labeler/data/wordnet_glosses.txt.gz (40,000 random synsets, one per line: its words, its definition, its examples)
with WordNet's license next to it (labeler/data/WORDNET_LICENSE), so nothing else needs apt.

    python scripts/build_wordnet_corpus.py [/usr/share/wordnet] [labeler/data/wordnet_glosses.txt.gz]
"""

from __future__ import annotations

import gzip
import random
import sys
from pathlib import Path

PARTS = ("noun", "verb", "adj", "adv")
KEEP = 40_000
"""Synsets kept (a random sample, about 1.7 MB compressed); all 117,659 would be 4.8 MB."""


def synset_lines(data_file: Path) -> list[str]:
    """One line per synset: "word, word: definition; "example"" with underscores as spaces."""
    lines = []
    for raw in data_file.read_text(encoding="utf-8").splitlines():
        if raw.startswith("  ") or "|" not in raw:  # the license header is indented
            continue
        head, gloss = raw.split("|", 1)
        fields = head.split()
        count = int(fields[3], 16)
        words = [fields[4 + 2 * i].replace("_", " ") for i in range(count)]
        words = [w.split("(")[0] for w in words]  # adjective markers such as "(a)"
        lines.append(f"{', '.join(dict.fromkeys(words))}: {gloss.strip()}")
    return lines


def main() -> None:
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/wordnet")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "labeler/data/wordnet_glosses.txt.gz")
    lines = [line for part in PARTS for line in synset_lines(source / f"data.{part}")]
    random.Random(0).shuffle(lines)  # mix parts of speech, so any prefix of the corpus is a fair sample
    lines = lines[:KEEP]
    with gzip.open(out, "wt", encoding="utf-8", compresslevel=9) as f:
        f.write("\n".join(lines) + "\n")
    print(f"{len(lines)} synsets -> {out} ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
