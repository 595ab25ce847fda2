"""docs/security.md names the test behind each claim: every test it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = re.compile(r"(tests/[\w/]+\.py)::(\w+)")


def test_every_test_named_in_the_security_document_exists() -> None:
    text = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    references = set(REFERENCE.findall(text))
    assert len(references) > 40
    missing = []
    for path, name in sorted(references):
        source = ROOT / path
        if not source.is_file() or not re.search(
            rf"^(def {name}\(|{name} = )", source.read_text(encoding="utf-8"), re.MULTILINE
        ):
            missing.append(f"{path}::{name}")
    assert not missing, f"docs/security.md names tests that do not exist: {missing}"


def test_every_security_test_module_is_named_in_the_document() -> None:
    text = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    modules = sorted(p.name for p in (ROOT / "tests" / "security").glob("test_security_*.py"))
    unnamed = [m for m in modules if m != Path(__file__).name and m not in text]
    assert not unnamed, f"security tests the document does not mention: {unnamed}"
