"""A causal-LM row in TRL's conversational format: a `messages` column, a list of {"role", "content"} turns.

The last turn is the assistant's response and the one before it the user's prompt; the turns before
those (a system turn, earlier exchanges) are the example's context, which chat.py renders before the
prompt. A row of one user and one assistant turn is the same example as a prompt-response row.
"""

from __future__ import annotations

import unicodedata

from .errors import DataError

MESSAGES = "messages"
SHAPE = '[{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]'


def is_conversational(row: dict, text_column: str) -> bool:
    """A file of conversations: its first row has a `messages` column and no text column."""
    return MESSAGES in row and text_column not in row


def conversation(where: str, row: dict) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """(the user's prompt, the assistant's response, the (role, content) turns before them) of a row's `messages`."""
    if MESSAGES not in row:
        raise DataError(f"{where} has no {MESSAGES!r} (it has {sorted(map(str, row))}); give every row its conversation as {SHAPE}")
    turns = row[MESSAGES]
    if not isinstance(turns, list):
        kind = "null" if turns is None else type(turns).__name__
        raise DataError(f"{where} has a {kind} in {MESSAGES!r}, not a list of turns; write the conversation as {SHAPE}")
    pairs = [_turn(where, number, turn) for number, turn in enumerate(turns, 1)]
    roles = [role for role, _ in pairs]
    if roles[-2:] != ["user", "assistant"]:
        raise DataError(f"{where} has {MESSAGES!r} that end with the roles {roles[-2:]}, not a user turn and then the assistant's response; "
                        f"end the conversation as {SHAPE}")
    for role, content in pairs[-2:]:
        if not content.strip():
            raise DataError(f"{where} has an empty {role} turn in {MESSAGES!r}; fill it in or remove the row")
    return pairs[-2][1], pairs[-1][1], tuple(pairs[:-2])


def _turn(where: str, number: int, turn) -> tuple[str, str]:
    if not isinstance(turn, dict):
        raise DataError(f"{where} has a {type(turn).__name__} as turn {number} of {MESSAGES!r}, not an object; write each turn as "
                        '{"role": ..., "content": ...}')
    for key in ("role", "content"):
        value = turn.get(key)
        if not isinstance(value, str) or (key == "role" and not value.strip()):
            found = "no" if value is None else "an empty" if isinstance(value, str) else f"a non-text ({type(value).__name__})"
            raise DataError(f"{where} has {found} {key!r} in turn {number} of {MESSAGES!r}; give every turn a text role "
                            "(system, user or assistant) and a text content")
    return turn["role"], unicodedata.normalize("NFC", turn["content"])
