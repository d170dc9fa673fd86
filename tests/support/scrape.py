"""Scrape a service's ``/metrics`` and read values out of it, as Prometheus would.

``Scrape`` holds one parsed answer (prometheus-client's own text parser): its families
(name and type) and its samples; :meth:`Scrape.value` sums the samples of one series name
whose labels include the given ones (0.0 when none does, as ``sum(...) or vector(0)``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry


@dataclass(frozen=True, slots=True)
class Sample:
    """One series value: ``name`` (with its ``_total``/``_bucket``... suffix), labels."""

    name: str
    labels: dict[str, str]
    value: float


@dataclass(frozen=True, slots=True)
class Scrape:
    """One ``/metrics`` answer."""

    families: set[tuple[str, str]]
    samples: list[Sample]

    def value(self, name: str, **labels: str) -> float:
        """Sum of the ``name`` samples whose labels include ``labels``."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def label_values(self, name: str, label: str) -> set[str]:
        """Every value ``label`` takes on ``name`` samples."""
        return {s.labels[label] for s in self.samples if s.name == name and label in s.labels}


def parse(text: str) -> Scrape:
    """Parse Prometheus text format into a :class:`Scrape`."""
    families: set[tuple[str, str]] = set()
    samples: list[Sample] = []
    for family in text_string_to_metric_families(text):
        families.add((family.name, family.type))
        samples.extend(Sample(s.name, dict(s.labels), s.value) for s in family.samples)
    return Scrape(families, samples)


def families_of(registry: CollectorRegistry) -> set[tuple[str, str]]:
    """``(name, type)`` of every family ``registry`` exposes, as the parser names them."""
    from prometheus_client.exposition import generate_latest

    return parse(generate_latest(registry).decode()).families


async def scrape(client: httpx.AsyncClient, url: str) -> Scrape:
    """GET ``url`` (a ``/metrics`` URL); assert 200 and the Prometheus content type."""
    resp = await client.get(url)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain"), resp.headers
    return parse(resp.text)


def total(scrapes: Iterable[Scrape], name: str, **labels: str) -> float:
    """:meth:`Scrape.value` summed over several processes (e.g. every worker)."""
    return sum(s.value(name, **labels) for s in scrapes)
