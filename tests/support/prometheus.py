"""Reading a Prometheus text scrape in tests: one sample's value, by name and labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape: (name, labels) → value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float | None:
    """The sample `name{labels}` (exactly these labels), or None when the scrape has none."""
    return samples(text).get((name, frozenset(labels.items())))


def names(text: str) -> set[str]:
    """The metric families the scrape declares (with or without samples)."""
    return {family.name for family in text_string_to_metric_families(text)}
