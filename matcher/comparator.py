"""The small interface between the watchlist and a minutiae comparison algorithm.

The watchlist (store, index, service) knows nothing about cylinders: it asks a
:class:`Comparator` to encode templates, to stack encodings into a contiguous gallery,
and to score one probe against a gallery. Scores come back calibrated,
``-10 * log10(FMR)`` (DESIGN.md), so 40 means a false match rate of 1e-4 and the
decision logic never depends on one algorithm's raw scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from matcher.template import Template


class Comparator(Protocol):
    """A one-probe-against-many minutiae comparison algorithm."""

    name: str

    def encode(self, template: Template) -> Any:
        """Per-template features, computed once at enrolment or per probe."""

    def stack(self, encoded: Sequence[Any]) -> Any:
        """A gallery: the encodings of many templates as contiguous arrays."""

    def encode_many(self, templates: Sequence[Template], *, threads: int | None = None) -> Any:
        """The gallery of many templates at once: ``stack([encode(t) ...])``, faster; on
        ``threads`` cores (default: the comparator's own)."""

    def scores(self, probe: Any, gallery: Any, rows: np.ndarray | None = None) -> np.ndarray:
        """Calibrated scores (float32) of ``probe`` against every gallery row, in order;
        with ``rows`` (ascending) only those are compared and the others score 0."""

    def scores_of_parts(
        self, probe: Any, parts: Sequence[tuple[Any, np.ndarray]]
    ) -> list[np.ndarray]:
        """One search over several galleries (an index's segments): ``out[i][k]`` is the
        calibrated score of row ``parts[i][1][k]`` (ascending) of gallery ``parts[i][0]``.
        An algorithm with a costly last stage spends it on the best rows of all parts
        together, not on the best of each."""
