"""How a causal-LM example becomes tokens: plain text, or the turns of the tokenizer's chat template (--chat-template).

Plain: the prompt's tokens, then the response's and the end-of-sequence token, which carry the loss.
Chat: the prompt (the example's earlier turns, then its text as the user's turn) and the response as
the assistant's turn, rendered by the tokenizer's template, as TRL's SFTTrainer renders conversational
prompt-completion data: the loss is on what the whole conversation adds after the prompt rendered with
the generation prompt (the assistant's answer and the template's end of turn). Where a template renders
the prompt alone differently, the response starts where the two renderings part, as in TRL.
"""

from __future__ import annotations

from .data_files import Example
from .errors import DataError


def uses_chat_template(tokenizer, chat_template: str) -> bool:
    """Whether --chat-template (auto or none) renders this tokenizer's examples as chat turns."""
    return chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))


def rendered(tokenizer, example: Example, chat: bool) -> tuple[list[int], list[int]]:
    """(the prompt's token ids, the response's token ids): the loss is on the response's."""
    if not chat:
        if example.context:
            raise DataError(f"the data has a conversation of {len(example.context) + 2} turns, which plain text (no chat template) cannot render: "
                            "an example is then one prompt and its response; pass --chat-template auto with a model whose tokenizer has a chat "
                            "template, or keep only a user turn before the assistant's")
        prompt = tokenizer(example.text, add_special_tokens=False)["input_ids"]
        return prompt, tokenizer(example.label, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    turns = [*({"role": role, "content": content} for role, content in example.context), {"role": "user", "content": example.text}]
    prompt = _chat_ids(tokenizer, turns, add_generation_prompt=True)
    whole = _chat_ids(tokenizer, [*turns, {"role": "assistant", "content": example.label}])
    start = next((i for i, (a, b) in enumerate(zip(prompt, whole)) if a != b), min(len(prompt), len(whole)))
    return whole[:start], whole[start:]


def _chat_ids(tokenizer, turns: list[dict], add_generation_prompt: bool = False) -> list[int]:
    return tokenizer.apply_chat_template(turns, tokenize=True, return_dict=True, add_generation_prompt=add_generation_prompt)["input_ids"]

