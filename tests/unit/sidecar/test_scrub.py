"""scrub: registered secret values never leave the process."""

from __future__ import annotations

from packgate_sidecar import scrub


def test_registered_values_are_replaced_in_bytes_and_text() -> None:
    scrub.register(["sk-unit-abcdefghijkl", "short"])
    assert scrub.scrub_bytes(b'{"m":"key sk-unit-abcdefghijkl!"}') == b'{"m":"key [REDACTED]!"}'
    assert scrub.scrub_text("x sk-unit-abcdefghijkl y") == "x [REDACTED] y"
    # Too short to be a key: replacing it would mangle ordinary text.
    assert scrub.scrub_text("a short text") == "a short text"


def test_a_longer_secret_containing_a_shorter_one_is_replaced_whole() -> None:
    scrub.register(["sk-unit-inner-123", "sk-unit-inner-123-outer"])
    assert scrub.scrub_text("sk-unit-inner-123-outer") == "[REDACTED]"
