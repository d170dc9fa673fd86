"""Scrape a service's ``/metrics`` and read values out of it, as Prometheus would.

``Scrape`` holds one parsed answer (prometheus-client's own text parser): its families
(name and type) and its samples; :meth:`Scrape.value` sums the samples of one series name
whose labels include the given ones.

A series the scrape does not declare at all (no ``# TYPE`` family for it: a metric
renamed or dropped), or a label no sample of it carries, raises :class:`MissingSeries`:
a check like ``value(...) == 0`` must not pass because the metric is gone. A declared
family whose matching labelled child was never used sums to 0.0 (prometheus-client only
exports a child once it is touched), as ``sum(...) or vector(0)`` would.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}
"""The sample names the text format gives a family of each type (``name + suffix``)."""


class MissingSeries(AssertionError):
    """A series (or a label of it) that the scrape does not have: renamed or dropped."""


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

    def declares(self, name: str) -> bool:
        """True when a family of this scrape owns the sample name ``name``."""
        return any(
            name == family + suffix
            for family, kind in self.families
            for suffix in _SUFFIXES.get(kind, ("",))
        )

    def _series(self, name: str, labels: tuple[str, ...]) -> list[Sample]:
        """The ``name`` samples; :class:`MissingSeries` if undeclared or a label is unknown."""
        if not self.declares(name):
            known = sorted(f for f, _ in self.families if f.startswith("taskflow_"))
            raise MissingSeries(f"no series {name!r} in this scrape; its families: {known}")
        samples = [s for s in self.samples if s.name == name]
        keys = {k for s in samples for k in s.labels}
        unknown = [k for k in labels if samples and k not in keys]
        if unknown:
            raise MissingSeries(f"{name} has no label {unknown} (its labels: {sorted(keys)})")
        return samples

    def value(self, name: str, **labels: str) -> float:
        """Sum of the ``name`` samples whose labels include ``labels`` (0.0 if none do).

        Raises :class:`MissingSeries` when the scrape does not declare ``name`` or no
        sample of it has one of the ``labels`` keys.
        """
        return sum(
            s.value
            for s in self._series(name, tuple(labels))
            if all(s.labels.get(k) == v for k, v in labels.items())
        )

    def label_values(self, name: str, label: str) -> set[str]:
        """Every value ``label`` takes on ``name`` samples (:class:`MissingSeries` as above)."""
        return {s.labels[label] for s in self._series(name, (label,)) if label in s.labels}


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
    """:meth:`Scrape.value` summed over several processes (e.g. every worker).

    Raises :class:`MissingSeries` as :meth:`Scrape.value` does, for any of them.
    """
    return sum(s.value(name, **labels) for s in scrapes)
