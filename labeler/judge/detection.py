"""delphi's detection scorer (arXiv 2410.13928) with a local causal LM as judge.

The judge is shown the label and one text and answers whether the text holds an example of it, in
delphi's prompt (its system text and three worked examples, n_examples_shown = 1). Where delphi
generates the answer list "[1]" or "[0]" and reads the normalised probability P("1") / (P("0") +
P("1")) from the log-probs, we read the same two probabilities straight from the next-token
distribution after the answer's opening bracket: the answer is "yes" when P("1") > P("0"). Texts are
scored in left-padded batches (no prefix cache: each prompt differs in its label and text). The judge
is loaded as a causal-LM discriminator is (labeler/discriminators/causal_lm.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from labeler.discriminators.causal_lm import CausalLMConfig, CausalLMDiscriminator
from labeler.errors import ConfigError
from labeler.judge.examples import JudgeExamples
from labeler.judge.records import LabelKind, Score, score_record

DELPHI_SYSTEM = (
    "You are an intelligent and meticulous linguistics researcher.\n\n"
    'You will be given a certain latent of text, such as "male pronouns" or "text with negative sentiment".\n\n'
    "You will then be given several text examples. Your task is to determine which examples possess the latent.\n\n"
    "For each example in turn, return 1 if the sentence is correctly labeled or 0 if the tokens are mislabeled. "
    "You must return your response in a valid Python list. Do not return anything else besides a Python list.\n"
)
DELPHI_SHOTS: tuple[tuple[str, str], ...] = (
    (
        "Latent explanation: Words related to American football positions, specifically the tight end position.\n\n"
        "Test examples:\n\n"
        "Example 0:<|endoftext|>Getty ImagesĊĊPatriots tight end Rob Gronkowski had his bossâĢĻ\n"
        "Example 1: names of months used in The Lord of the Rings:ĊĊâĢľâĢ¦the\n"
        "Example 2: Media Day 2015ĊĊLSU defensive end Isaiah Washington (94) speaks to the\n"
        "Example 3: shown, is generally not eligible for ads. For example, videos about recent tragedies,\n"
        "Example 4: line, with the left side âĢĶ namely tackle Byron Bell at tackle and guard Amini\n",
        "[1,0,0,0,1]",
    ),
    (
        'Latent explanation: The word "guys" in the phrase "you guys".\n\n'
        "Test examples:\n\n"
        "Example 0: enact an individual health insurance mandate?âĢĿ, Pelosi's response was to dismiss both\n"
        "Example 1: birth control access<|endoftext|> but I assure you women in Kentucky aren't laughing as they "
        "struggle\n"
        "Example 2: du Soleil Fall Protection Program with construction requirements that do not apply to theater "
        "settings because\n"
        "Example 3:Ċ<|endoftext|> distasteful. Amidst the slime lurk bits of Schadenfre\n"
        "Example 4: the<|endoftext|>ľI want to remind you all that 10 days ago (director Massimil\n",
        "[0,0,0,0,0]",
    ),
    (
        'Latent explanation: "of" before words that start with a capital letter.\n\n'
        "Test examples:\n\n"
        "Example 0: climate, TomblinâĢĻs Chief of Staff Charlie Lorensen said.Ċ\n"
        "Example 1: no wonderworking relics, no true Body and Blood of Christ, no true Baptism\n"
        "Example 2:ĊĊDeborah Sathe, Head of Talent Development and Production at Film London,\n"
        "Example 3:ĊĊIt has been devised by Director of Public Prosecutions (DPP)\n"
        "Example 4: and fair investigation not even include the Director of Athletics? Â· Finally, we believe the\n",
        "[1,1,1,1,1]",
    ),
)
DELPHI_QUESTION = "Latent explanation: {label}\n\nText examples:\n\nExample 0: {text}\n"


@dataclass(frozen=True)
class DetectionConfig:
    """The question put to the judge and how it is batched."""

    system: str = DELPHI_SYSTEM
    """System instruction (a system message in chat format, the first paragraph otherwise)."""
    shots: tuple[tuple[str, str], ...] = field(default=DELPHI_SHOTS)
    """Worked (question, answer) pairs shown before the question; delphi's three by default."""
    question: str = DELPHI_QUESTION
    """The question; {label} and {text} are filled in."""
    answer_prefix: str = "["
    """The start of the judge's answer; the yes/no token is read right after it."""
    yes_token: str = "1"
    no_token: str = "0"
    chat: Literal["auto", "always", "never"] = "auto"
    """Format with the tokenizer's chat template ("auto": when it has one)."""
    batch: int = 16
    """Prompts per forward pass."""

    def __post_init__(self) -> None:
        try:
            self.question.format(label="", text="")
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(f"detection question may use only {{label}} and {{text}}: {err}") from err
        if self.batch < 1:
            raise ConfigError(f"detection batch must be at least 1, got {self.batch}")


class DetectionJudge:
    """Asks a causal LM, text by text, whether the text holds an example of the label."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: DetectionConfig, name: str
    ) -> None:
        self.model, self.tokenizer, self.config, self.name = model.eval(), tokenizer, config, name
        self.device = next(model.parameters()).device
        self.use_chat = config.chat == "always" or (config.chat == "auto" and bool(tokenizer.chat_template))
        self.yes_id, self.no_id = self._single_token(config.yes_token), self._single_token(config.no_token)

    @classmethod
    def from_spec(cls, spec: str, config: DetectionConfig | None = None, device: str = "auto") -> DetectionJudge:
        """A judge from `hf:DIR`, loaded as a causal-LM discriminator would be."""
        if not spec.startswith("hf:"):
            raise ConfigError(f"the detection scorer needs a causal LM judge hf:MODEL_DIR, got {spec!r}")
        disc = CausalLMDiscriminator.from_config(CausalLMConfig(model=spec[3:], device=device))
        return cls(disc.model, disc.tokenizer, config or DetectionConfig(), disc.name)

    def messages(self, label: str, text: str) -> list[dict[str, str]]:
        """The conversation for one (label, text): system, worked examples, question (delphi's `prompt`)."""
        messages = [{"role": "system", "content": self.config.system}]
        for q, a in self.config.shots:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        return [*messages, {"role": "user", "content": self.config.question.format(label=label, text=text)}]

    def prompt(self, label: str, text: str) -> str:
        """The whole prompt for one (label, text), ending where the answer token is predicted."""
        messages = self.messages(label, text)
        if not self.use_chat:
            return "\n\n".join(m["content"] for m in messages) + "\n" + self.config.answer_prefix
        try:
            rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # templates without a system role: fold it into the first user turn
            merged = [{"role": "user", "content": f"{self.config.system}\n\n{messages[1]['content']}"}, *messages[2:]]
            rendered = self.tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
        return f"{rendered}{self.config.answer_prefix}"

    @torch.no_grad()
    def probabilities(self, label: str, texts: Sequence[str]) -> np.ndarray:
        """Float64[N]: P(yes) / (P(yes) + P(no)) at the answer, one prompt per text."""
        ids = [self._ids(self.prompt(label, text)) for text in texts]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out = np.empty(len(ids), dtype=np.float64)
        for start in range(0, len(ids), self.config.batch):
            part = ids[start : start + self.config.batch]
            width = max(len(p) for p in part)
            batch = torch.tensor([[pad] * (width - len(p)) + p for p in part], device=self.device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in part], device=self.device)
            positions = (mask.cumsum(1) - 1).clamp_min(0)
            logits = self.model(input_ids=batch, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits
            pair = logits[:, -1, [self.no_id, self.yes_id]].double().log_softmax(-1)  # renormalised over the two
            out[start : start + len(part)] = pair[:, 1].exp().cpu().numpy()
        return out

    def score(self, examples: JudgeExamples, label: str, label_kind: LabelKind = "label") -> Score:
        """Balanced accuracy of the judge's answers (and AUROC of its P(yes)) on the examples' texts."""
        probability = self.probabilities(label, examples.contexts)
        yes = probability > 0.5
        return score_record(examples, "detection", self.name, label_kind, label, probability, yes, "balanced_accuracy")

    def _ids(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer(text, add_special_tokens=False).input_ids
        bos = self.tokenizer.bos_token_id
        if not self.use_chat and bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        return ids

    def _single_token(self, text: str) -> int:
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise ConfigError(f"the detection answer {text!r} must be one token of the judge's tokenizer; it is {ids}")
        return int(ids[0])
