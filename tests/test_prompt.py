"""labeler/discriminators/prompt.py: the prompt template a discriminator asks its question with."""

from __future__ import annotations

import pytest

from labeler.discriminators.prompt import PAPER_SYSTEM, PAPER_USER, PromptTemplate, template_fields


def test_template_without_label_slot_is_refused() -> None:
    with pytest.raises(ValueError, match="label slot"):
        PromptTemplate(user='Is "{word}" in "{text}" an example?')
    with pytest.raises(ValueError, match="before"):
        PromptTemplate(user='Concept "{label}": is "{word}" in "{text}" an example?')


def test_the_prompt_splits_at_the_label_and_renders_the_paper_question() -> None:
    template = PromptTemplate()
    before, after = template.split_user("a red apple", "apple")
    assert before == 'The text is: "a red apple". From this text, is the word "apple" an example of the concept "'
    assert after == '"?'
    want = PAPER_USER.format(text="a red apple", word="apple", label="fruit")
    assert template.render_plain("a red apple", "apple", "fruit") == f"{PAPER_SYSTEM}\n\n{want}\nRating: "


def test_unknown_fields_and_stray_braces_are_named() -> None:
    with pytest.raises(ValueError, match=r"unknown fields \['colour'\]"):
        PromptTemplate(user='"{text}" "{word}" {colour} "{label}"?')
    with pytest.raises(ValueError, match="write a literal brace twice"):
        PromptTemplate(user='"{text}" "{word}" {label} }')
    assert template_fields("{text} {{literal}} {word:{label}}", "t") == ["text", "word", "label"]
