"""The form of a secret sent in a header: the admin key, the metrics token, the dashboard secret.

One rule for the server's start-up check and the operator's CLI (DESIGN.md
section 1: one red line naming the input and its expected form): printable
ASCII without spaces (U+0021 to U+007E). A secret of another form can never
be matched: HTTP clients cannot encode letters outside ASCII into a header,
refuse control characters (a carriage return would start a new header), and
whitespace at either end is lost on the way (the server's start check used to
strip it, the request did not). Pure: the messages name the secret, never its value.
"""

from __future__ import annotations

import re

__all__ = ["SECRET_FORM", "is_secret_form"]

#: The expected form, as messages write it.
SECRET_FORM = (
    "printable ASCII without spaces "
    "(it must not begin or end with whitespace or hold control characters)"
)

_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")


def is_secret_form(value: str) -> bool:
    """Whether ``value`` is a non-empty run of printable ASCII without spaces (U+0021 to U+007E)."""
    return _PRINTABLE_ASCII.fullmatch(value) is not None
