"""The eye-test truth of the demo SAE: what a person sees in each feature, and whether a label names it.

benchmarks/data/demo-sae-eye-truth.json holds, for each feature, its kind (`token`, `concept` or `none`),
the words a person accepts as its label (`accept`), the target strings it fires on (`tokens`) and a note;
its header says how the exemplars were harvested, which SAE they came from, the matching rules and the
tuning/report split. This module reads that file and applies the matching rules; it knows nothing about
how labels are produced, and it does not judge a label it was not given (synonyms missing from `accept`
count as misses).

    from eye_truth import load_truth, is_named
    truth = load_truth(Path("benchmarks/data/demo-sae-eye-truth.json"))
    is_named("tokens: a / an", "token", truth.features[14])
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Kind = Literal["token", "concept", "none"]
KINDS: tuple[str, ...] = ("token", "concept", "none")
LABEL_KINDS: tuple[str, ...] = ("token", "concept")
QUOTES = "\"'`\u201c\u201d\u2018\u2019"


@dataclass(frozen=True)
class FeatureTruth:
    """What a person sees in one feature."""

    kind: Kind
    """token: most activation on a few strings; concept: a nameable meaning; none: neither, or unclear."""
    accept: tuple[str, ...]
    """Words a person accepts as the label (concept: its name and near synonyms; token: words that describe it)."""
    tokens: tuple[str, ...]
    """Target strings it fires on, the main one first (required for token features)."""
    note: str
    """One line on what the exemplars showed."""


@dataclass(frozen=True)
class EyeTruth:
    """The whole truth file."""

    header: dict[str, Any]
    """How it was made: harvest command and settings, SAE checksum, date, matching rules, split."""
    features: dict[int, FeatureTruth]
    """Feature id -> its truth."""

    def split(self, name: Literal["tuning", "report"]) -> list[int]:
        """The feature ids of one half of the split, as the header gives it (inclusive bounds)."""
        first, last = self.header["split"][name]
        return [fid for fid in sorted(self.features) if first <= fid <= last]


def load_truth(path: Path) -> EyeTruth:
    """Read and check a truth file; a malformed entry raises ValueError naming the file, feature and problem."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable JSON truth file ({error})") from error
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("header"), dict)
        or not isinstance(raw.get("features"), dict)
    ):
        raise ValueError(f"{path}: expected an object with a 'header' object and a 'features' object")
    split = raw["header"].get("split")
    if not isinstance(split, dict) or set(split) != {"tuning", "report"}:
        raise ValueError(f"{path}: header.split must give 'tuning' and 'report' as [first, last] feature ids")
    features = {}
    for key, entry in raw["features"].items():
        if not key.isdigit():
            raise ValueError(f"{path}: feature key {key!r} is not a feature id (a non-negative integer)")
        features[int(key)] = _feature(entry, f"{path}: feature {key}")
    return EyeTruth(header=raw["header"], features=features)


def _feature(entry: Any, where: str) -> FeatureTruth:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object with kind, accept, tokens, note")
    kind = entry.get("kind")
    if kind not in KINDS:
        raise ValueError(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")
    lists = {}
    for field in ("accept", "tokens"):
        value = entry.get(field)
        if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
            raise ValueError(f"{where}: {field} must be a list of non-empty strings, got {value!r}")
        lists[field] = tuple(value)
    if not isinstance(entry.get("note"), str) or not entry["note"].strip():
        raise ValueError(f"{where}: note must be a non-empty string")
    if kind == "concept" and not lists["accept"]:
        raise ValueError(f"{where}: a concept feature needs at least one accept word")
    if kind == "token" and not lists["tokens"]:
        raise ValueError(f"{where}: a token feature needs at least one token string")
    if kind == "none" and (lists["accept"] or lists["tokens"]):
        raise ValueError(f"{where}: a none feature takes no accept words or tokens")
    return FeatureTruth(kind=kind, accept=lists["accept"], tokens=lists["tokens"], note=entry["note"])


def normalise(text: str) -> str:
    """Case-folded, without surrounding quotes or spaces, a leading '##', or a leading/trailing '-' of an affix."""
    text = text.strip().strip(QUOTES).strip().casefold()
    if text.startswith("##") and len(text) > 2:
        text = text[2:]
    stripped = text.strip("-")
    return stripped if stripped else text


def number_forms(word: str) -> set[str]:
    """The word with its plural/singular: s, es, and y/ies."""
    forms = {word, word + "s", word + "es"}
    if word.endswith("ies"):
        forms.add(word[:-3] + "y")
    if word.endswith("es"):
        forms.add(word[:-2])
    if word.endswith("s"):
        forms.add(word[:-1])
    if word.endswith("y"):
        forms.add(word[:-1] + "ies")
    return forms


def label_strings(label: str, label_kind: str) -> list[str]:
    """The normalised strings a label names: the whole label for a concept; each listed string for a token label.

    A token label may carry a `token:`/`tokens:` prefix and list its strings quoted (`"("`, `","`) or
    separated by '/', ',' or spaces (`a / an / the`).
    """
    if label_kind not in LABEL_KINDS:
        raise ValueError(f"label_kind {label_kind!r} is not one of {', '.join(LABEL_KINDS)}")
    if label_kind == "concept":
        return [normalise(label)]
    body = re.sub(r"^\s*tokens?\s*:\s*", "", label, flags=re.IGNORECASE).strip()
    quoted = [a or b for a, b in re.findall(r'"([^"]+)"|\'([^\']+)\'', body)]
    if quoted:
        parts = quoted
    elif len(body) == 1:
        parts = [body]
    else:
        parts = [part for part in re.split(r"\s*[/,]\s*|\s+", body) if part]
    return [normalise(part) for part in parts]


def is_named(label: str, label_kind: str, truth: FeatureTruth) -> bool:
    """Whether a label names the feature by the header's rules (kind none: never)."""
    if truth.kind == "none":
        return False
    strings = label_strings(label, label_kind)
    if not strings or not all(strings):
        return False
    accept = {normalise(word) for word in truth.accept}

    def accepted(text: str) -> bool:
        return bool(number_forms(text) & accept)

    if truth.kind == "concept":
        return all(accepted(text) for text in strings)
    tokens = [normalise(token) for token in truth.tokens]
    if label_kind == "concept":
        return accepted(strings[0]) or strings[0] == tokens[0]
    known = [text for text in strings if text in tokens or accepted(text)]
    return tokens[0] in strings and 2 * len(known) >= len(strings)
