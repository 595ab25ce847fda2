"""What the agent says when the server refuses its device token (docs/agent.md, "A rotated device token").

A 401 on a device route means the token was revoked or rotated on the
server (``javia devices revoke`` / ``javia devices rotate-token``); the
agent already re-read its token file once before giving up on the request.
Retrying alone never fixes it, so the log line says what to do, and says it
once per distinct refusal rather than at every retry.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from javia_agent.errors import AuthenticationError

__all__ = ["TokenRefusalLog", "token_refused_message"]


def token_refused_message(
    error: AuthenticationError, device_uuid: uuid.UUID | None, token_file: Path
) -> str:
    """The one line for an operator: what the server said, why, and the two ways out."""
    device = str(device_uuid) if device_uuid is not None else "UUID"
    return (
        f"{error}; the device token was revoked or rotated on the server: run "
        f"`javia devices rotate-token {device}` on the server and write the new token to "
        f"{token_file} (the running agent picks it up), or register the device again with "
        "`javia agent register`"
    )


class TokenRefusalLog:
    """Whether a token refusal is news: the first of a run, or one whose text changed."""

    def __init__(self) -> None:
        self._last: str | None = None

    def is_news(self, message: str) -> bool:
        """True the first time ``message`` follows a different one (or none); False on repeats."""
        news = message != self._last
        self._last = message
        return news

    def reset(self) -> None:
        """The token worked again: the next refusal is news."""
        self._last = None
