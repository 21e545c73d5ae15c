"""Reviewed cases flow into datasets by themselves: each case a person decided becomes an
item of ``reviews/<route>`` (see `items.from_review`). The server's review pass calls
`ReviewedCases.sync` every second; a case already in a dataset is never added twice, so a
restart (which reads every decided case once again) loses nothing and duplicates nothing."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from inferline.evals.items import from_review
from inferline.store.datasets import DatasetItem, DatasetStore
from inferline.store.reviews import ReviewStore

_OVERLAP_S = 60.0  # cases decided this long before the last one seen are read again
_PAGE = 2000


def dataset_name(route: str) -> str:
    """The dataset a route's reviewed cases go to."""
    return f"reviews/{route}"


class ReviewedCases:
    """Appends newly decided cases to their route's dataset."""

    def __init__(self, reviews: ReviewStore, datasets: DatasetStore) -> None:
        self.reviews, self.datasets = reviews, datasets
        self._since = 0.0  # the first pass reads every decided case

    def sync(self) -> int:
        """Adds the cases decided since the last pass; how many were added."""
        added = 0
        while True:
            cases = self.reviews.decided_by_people(self._since, limit=_PAGE)
            fresh = self._missing(cases)
            by_route: dict[str, list[DatasetItem]] = defaultdict(list)
            for route, item in fresh:
                by_route[route].append(item)
            for route, items in by_route.items():
                self.datasets.write(dataset_name(route), items, source="reviews",
                                    note=f"{len(items)} reviewed case(s)")  # fmt: skip
                added += len(items)
            if len(cases) < _PAGE:
                if cases:
                    self._since = max(self._since, cases[-1]["decided_at"] - _OVERLAP_S)
                return added
            # a full page: go on from its last decision (no overlap, so a page of cases
            # already present cannot be read forever)
            self._since = max(self._since, cases[-1]["decided_at"])

    def _missing(self, cases: list[dict[str, Any]]) -> list[tuple[str, DatasetItem]]:
        present = self.datasets.sources_present([f"review:{c['id']}" for c in cases])
        out = []
        for case in cases:
            if f"review:{case['id']}" in present:
                continue
            item = from_review(case)
            if item is not None:
                out.append((str(case["route"]), item))
        return out
