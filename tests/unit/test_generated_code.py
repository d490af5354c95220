"""The committed generated code matches what `make proto` produces from the protos now."""

from __future__ import annotations

from escalation.devenv import protogen


def test_generated_code_has_not_drifted_from_the_protos() -> None:
    assert protogen.drift() == [], "run `make proto` and commit the result"
