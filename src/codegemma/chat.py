"""The Gemma instruction-tuned turn format."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from codegemma.errors import InvalidRequestError

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
CHAT_STOP_TOKENS = (END_OF_TURN, "<eos>")


def chat_prompt(messages: Sequence[Mapping[str, str]]) -> str:
    """Prompt text (without BOS) asking the model for the next assistant turn.

    Roles are `user` and `assistant` (or `model`), alternating and starting with `user`; a
    leading `system` message is folded into the first user turn, since Gemma has no system role.
    """
    turns, tail = chat_turns(messages)
    return "".join(turns) + tail


def chat_turns(messages: Sequence[Mapping[str, str]]) -> tuple[list[str], str]:
    """The text of each turn of `chat_prompt`, and the text that opens the model's turn."""
    turns = [
        f"{START_OF_TURN}{role}\n{content.strip()}{END_OF_TURN}\n"
        for role, content in _normalise(messages)
    ]
    return turns, f"{START_OF_TURN}model\n"


def _normalise(messages: Sequence[Mapping[str, str]]) -> list[tuple[str, str]]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise InvalidRequestError("messages must be a non-empty list of {role, content} objects")
    turns: list[tuple[str, str]] = []
    system = None
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidRequestError(f"message {i} must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if not isinstance(content, str):
            raise InvalidRequestError(f"message {i}: content must be a string")
        if role == "system":
            if i != 0:
                raise InvalidRequestError("a system message may only come first")
            system = content
            continue
        if role not in ("user", "assistant", "model"):
            raise InvalidRequestError(
                f"message {i}: unknown role {role!r} (use system, user or assistant)"
            )
        role = "model" if role == "assistant" else role
        expected = "user" if len(turns) % 2 == 0 else "model"
        if role != expected:
            raise InvalidRequestError(
                f"message {i}: roles must alternate user/assistant starting with user; "
                f"expected {expected}, got {role}"
            )
        turns.append((role, content))
    if not turns or turns[-1][0] != "user":
        raise InvalidRequestError("the last message must come from the user")
    if system is not None:
        turns[0] = ("user", f"{system.strip()}\n\n{turns[0][1]}")
    return turns
