"""KernelEvent JSON shapes are a wire contract: pin them byte for byte."""

from __future__ import annotations

import pytest

from ron.kernel import KernelEvent

SHAPES = [
    (KernelEvent.Health("svc", True), '{"Health":{"service":"svc","ok":true}}'),
    (KernelEvent.ConfigUpdated(42), '{"ConfigUpdated":{"version":42}}'),
    (
        KernelEvent.ServiceCrashed("svc", "boom"),
        '{"ServiceCrashed":{"service":"svc","reason":"boom"}}',
    ),
    (KernelEvent.Shutdown(), '"Shutdown"'),
]


@pytest.mark.parametrize(("event", "text"), SHAPES)
def test_each_variant_has_the_reference_json_shape(event: KernelEvent, text: str) -> None:
    assert event.to_json() == text


@pytest.mark.parametrize(("event", "text"), SHAPES)
def test_each_variant_round_trips(event: KernelEvent, text: str) -> None:
    assert KernelEvent.from_json(text) == event
    assert KernelEvent.from_json(event.to_json()) == event


@pytest.mark.parametrize(
    "bad",
    [
        '"Startup"',
        "{}",
        '{"Health":{"service":"svc"}}',
        '{"Health":{"service":"svc","ok":1}}',
        '{"ConfigUpdated":{"version":true}}',
        '{"ConfigUpdated":{"version":-1}}',
        '{"ServiceCrashed":{"service":"svc","reason":"x","extra":1}}',
        '{"Health":{"service":"a","ok":true},"Shutdown":{}}',
        "[]",
        "42",
    ],
)
def test_anything_but_the_four_shapes_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        KernelEvent.from_json(bad)


def test_there_are_exactly_four_variants() -> None:
    variants = {KernelEvent.Health, KernelEvent.ConfigUpdated}
    variants |= {KernelEvent.ServiceCrashed, KernelEvent.Shutdown}
    assert {v.kind for v in variants} == {"Health", "ConfigUpdated", "ServiceCrashed", "Shutdown"}
    assert all(issubclass(v, KernelEvent) for v in variants)


def test_kernel_public_surface_is_exactly_six_names() -> None:
    import ron.kernel

    assert sorted(ron.kernel.__all__) == sorted(
        ["Bus", "KernelEvent", "Metrics", "HealthState", "Config", "wait_for_ctrl_c"]
    )
