"""Fuzzing (hypothesis) of the byte parsers: ISO/ANSI records, ZFM frames, GT-521F packets.

A few hundred inputs per target in CI; the long run of 100,000 per target is
``python -m benchmarks.fuzz --target NAME --examples 100000`` (benchmarks/fuzz.py).
"""

from __future__ import annotations

import pytest

from benchmarks import fuzz

EXAMPLES = 400


@pytest.mark.parametrize("target", ["formats", "zfm", "gt521"])
def test_parser_survives_garbled_input(target) -> None:
    result = fuzz.run(target, EXAMPLES, derandomize=True)
    assert result.examples == EXAMPLES
    assert result.crashes == {}, result.as_dict()["crash_details"]


def test_the_harness_reports_a_crash() -> None:
    """A target whose check raises the wrong exception is reported, with a reproducer."""
    def check(_env, example) -> None:
        data, _finger = example
        if len(data) > 40:
            raise KeyError("boom")

    fuzz.TARGETS["broken"] = fuzz.Target("broken", fuzz.TARGETS["formats"].strategy, check)
    try:
        result = fuzz.run("broken", 200, derandomize=True)
    finally:
        del fuzz.TARGETS["broken"]
    (crash,) = result.crashes.values()
    assert crash.signature.startswith("KeyError at ") and crash.count >= 1
    assert "boom" in crash.message


def test_mutation_edits_stay_in_bounds() -> None:
    seed = bytes(range(20))
    assert fuzz._mutate(seed, []) == seed
    assert fuzz._mutate(seed, [(3, 5, b"")]) == seed[:5]
    assert fuzz._mutate(seed, [(1, 0, b"ab")]) == b"ab" + seed
    assert fuzz._mutate(seed, [(2, 19, b"xyz")]) == seed[:19]
    assert fuzz._mutate(b"", [(0, 7, b"a"), (4, 3, b""), (2, 1, b"")]) == b""
