"""The test scraper: a series that is not there is an error, never a silent 0."""

from __future__ import annotations

import pytest
from prometheus_client import Counter, Gauge
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from tests.support.scrape import MissingSeries, parse, total


def _scrape() -> tuple[CollectorRegistry, Counter]:
    registry = CollectorRegistry()
    done = Counter("taskflow_done", "Done.", ["type"], registry=registry)
    Gauge("taskflow_slots", "Slots.", registry=registry).set(4)
    return registry, done


def test_a_declared_series_sums_its_matching_samples() -> None:
    registry, done = _scrape()
    done.labels(type="a").inc(2)
    done.labels(type="b").inc()
    scrape = parse(generate_latest(registry).decode())
    assert scrape.value("taskflow_done_total") == 3
    assert scrape.value("taskflow_done_total", type="a") == 2
    assert scrape.value("taskflow_done_total", type="c") == 0  # a child never touched
    assert scrape.value("taskflow_slots") == 4
    assert scrape.label_values("taskflow_done_total", "type") == {"a", "b"}
    assert total([scrape, scrape], "taskflow_done_total", type="b") == 2


def test_a_declared_family_with_no_child_yet_is_zero() -> None:
    registry, _ = _scrape()
    scrape = parse(generate_latest(registry).decode())
    assert scrape.value("taskflow_done_total", type="a") == 0


@pytest.mark.parametrize(
    ("name", "labels"),
    [
        ("taskflow_renamed_total", {}),  # no such family
        ("taskflow_done", {}),  # the family, not a sample name of a counter
        ("taskflow_slots_total", {}),
        ("taskflow_done_total", {"kind": "a"}),  # a label the series does not have
    ],
)
def test_a_missing_series_or_label_raises(name: str, labels: dict[str, str]) -> None:
    registry, done = _scrape()
    done.labels(type="a").inc()
    scrape = parse(generate_latest(registry).decode())
    with pytest.raises(MissingSeries):
        scrape.value(name, **labels)
    with pytest.raises(MissingSeries):
        total([scrape], name, **labels)
