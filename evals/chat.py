"""What the model reads: a split's prompts rendered through the model's chat template, or as plain text.

lm-evaluation-harness's settings and names: ``apply_chat_template`` (on by default for a tokenizer that has a
template; ``--apply_chat_template false`` turns it off) and ``system_instruction`` (a system turn first). Rows may be
plain text (``prompt`` a string, answers continuing it) or TRL's conversational format (``prompt`` and
``completion`` message lists). ``render`` turns either into the strings the engines take: the templated prompt up
to the assistant's turn (``add_generation_prompt``), and answers without a leading space, since the turn starts on
a new line; without a template, messages become their contents joined by blank lines and answers continue after a
space, as the testbed's do.
"""

from __future__ import annotations

from dataclasses import dataclass

from datasets import DatasetDict

from posttrain.core.answers import answer_text
from posttrain.core.data import lead
from posttrain.core.errors import UsageError

ANSWER_COLUMNS = ("completion", "paraphrased_answer", "perturbed_answers")


def is_messages(value) -> bool:
    """1[value is a list of {"role", "content"} dicts: TRL's conversational format]."""
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "content" in m for m in value)


@dataclass(frozen=True)
class ChatFormat:
    """How prompts reach the model: through ``tokenizer``'s chat template when ``apply``, with an optional system
    turn."""

    tokenizer: object
    apply: bool
    system_instruction: str | None = None

    def prompt(self, value) -> str:
        messages = value if is_messages(value) else [{"role": "user", "content": value}]
        if self.system_instruction and messages[0].get("role") != "system":
            messages = [{"role": "system", "content": self.system_instruction}, *messages]
        if self.apply:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if not is_messages(value) and not self.system_instruction:
            return value
        return "\n\n".join(m["content"] for m in messages)

    def answer(self, value, prompt: str):
        """An answer column's value as a continuation of the rendered ``prompt`` (lists element by element)."""
        if isinstance(value, list) and not is_messages(value):
            return [self.answer(v, prompt) for v in value]
        if value is None:
            return None
        text = answer_text(value)
        return text.lstrip() if self.apply else lead(text, prompt[-1:].isspace())

    def changes(self, row: dict) -> bool:
        """Whether rendering changes rows like ``row`` (plain text without a template or system turn stays)."""
        return self.apply or bool(self.system_instruction) or is_messages(row["prompt"]) or \
            is_messages(row.get("completion"))

    def settings(self) -> dict:
        return {"apply_chat_template": self.apply, "system_instruction": self.system_instruction}


def chat_format(tokenizer, apply: bool | None = None, system_instruction: str | None = None) -> ChatFormat:
    """``apply`` None: the template when the tokenizer has one. Asking for a template the tokenizer lacks is bad
    input."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if apply and not has:
        raise UsageError(f"--apply_chat_template: the tokenizer of {tokenizer.name_or_path} has no chat template")
    return ChatFormat(tokenizer, has if apply is None else apply, system_instruction)


def render(dd: DatasetDict, fmt: ChatFormat) -> DatasetDict:
    """Every split with ``prompt`` the string the engines take and its answer columns continuing it
    (``ChatFormat``); splits without ``prompt`` are left as they are."""
    def row(r: dict) -> dict:
        prompt = fmt.prompt(r["prompt"])
        return {"prompt": prompt, **{c: fmt.answer(r[c], prompt) for c in ANSWER_COLUMNS if c in r}}

    out = {}
    for name, ds in dd.items():
        if "prompt" not in ds.column_names or not len(ds) or not fmt.changes(ds[0]):
            out[name] = ds
            continue
        changed = [c for c in ("prompt", *ANSWER_COLUMNS) if c in ds.column_names]
        new = ds.map(row, keep_in_memory=True, remove_columns=changed)
        out[name] = new.select_columns([c for c in ds.column_names if c in new.column_names])
    return DatasetDict(out)
