"""The discriminator's question, as text, with a slot for the label.

The label slot comes after the text and the word, so that everything before it (the "prefix") depends
only on the example and can be computed once; what follows it (the "suffix") is the same for every
example. This module knows nothing about tokens or models.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from labeler.errors import ConfigError

PAPER_SYSTEM = (
    "You assess whether a given word from some text represents a specified concept. "
    'Answer "Rating: 1" if it does and "Rating: 0" if it does not.'
)
PAPER_USER = 'The text is: "{text}". From this text, is the word "{word}" an example of the concept "{label}"?'
PAPER_ASSISTANT_PREFIX = "Rating: "


def template_fields(template: str, setting: str) -> list[str]:
    """The names of a str.format template's replacement fields, in order (those inside a format spec too)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ConfigError(
            f"{setting} is not a valid template ({err}): write a literal brace twice, {{{{ or }}}}; got {template!r}"
        ) from err
    names: list[str] = []
    for _, name, spec, _ in parsed:
        if name is not None:
            names.append(name)
        if spec:
            names.extend(template_fields(spec, setting))
    return names


@dataclass(frozen=True)
class PromptTemplate:
    """The question put to a discriminator; `{text}`, `{word}` and `{label}` are filled in."""

    system: str = PAPER_SYSTEM
    """System instruction (a system message in chat format, the first paragraph otherwise)."""
    user: str = PAPER_USER
    """The question; must hold `{label}` exactly once, after `{text}` and `{word}`."""
    assistant_prefix: str = PAPER_ASSISTANT_PREFIX
    """The start of the answer; the answer token is predicted right after it."""

    def __post_init__(self) -> None:
        fields = template_fields(self.user, "prompt template")
        if fields.count("label") != 1:
            raise ConfigError(
                f"prompt template must contain the label slot {{label}} exactly once; found it "
                f"{fields.count('label')} times in: {self.user!r}"
            )
        unknown = sorted(set(fields) - {"text", "word", "label"})
        if unknown:
            raise ConfigError(f"prompt template has unknown fields {unknown}; allowed: {{text}}, {{word}}, {{label}}")
        label_at = fields.index("label")
        for name in ("text", "word"):
            if name in fields[label_at:]:
                raise ConfigError(
                    f"prompt template must place {{{name}}} before {{label}}, so that the example's prefix "
                    f"can be cached: {self.user!r}"
                )

    def split_user(self, text: str, word: str) -> tuple[str, str]:
        """The user message around the label slot: (before, after), with text and word filled in."""
        before, after = self.user.split("{label}")
        return before.format(text=text, word=word), after.format()

    def render_plain(self, text: str, word: str, label: str) -> str:
        """The whole prompt for tokenizers without a chat template (also used to train toy models)."""
        before, after = self.split_user(text, word)
        return f"{self.system}\n\n{before}{label}{after}\n{self.assistant_prefix}"
