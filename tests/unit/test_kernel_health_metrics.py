"""Readiness names what is missing; metrics merge per-service expositions."""

from __future__ import annotations

import random

from prometheus_client.parser import text_string_to_metric_families

from ron.kernel import HealthState, Metrics
from ron.kernel.metrics import (
    FOLD_AT,
    RequestTally,
    merge_expositions,
    status_class,
)
from ron.kernel.supervisor import backoff_delay, describe_exit


def test_not_ready_until_config_and_required_services_are_healthy() -> None:
    h = HealthState()
    h.register("index")
    h.register("extra", required=False)
    assert h.missing() == ["config", "service:index"]
    h.set_config_loaded()
    assert h.set("index", True) is True
    assert h.ready()
    h.set_draining()
    assert h.missing() == ["draining"]


def test_health_set_reports_changes_only() -> None:
    h = HealthState()
    assert h.set("a", True) is True
    assert h.set("a", True) is False
    assert h.set("a", False, "down") is True


def test_two_metrics_instances_do_not_share_a_registry() -> None:
    a, b = Metrics(), Metrics()
    a.requests_total.labels("/o/{addr}", "GET", "2xx").inc()
    assert b.registry.get_sample_value(
        "requests_total", {"route": "/o/{addr}", "method": "GET", "status": "2xx"}
    ) in (None, 0.0)


def test_merged_exposition_labels_each_service_and_merges_families() -> None:
    a, b = Metrics(), Metrics()
    a.rejected_total.labels("service_crash").inc()
    b.rejected_total.labels("quota").inc(2)
    text = merge_expositions([("kernel", a.render().decode()), ("gateway", b.render().decode())])
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    samples = {
        (s.labels["service"], s.labels["reason"]): s.value for s in families["rejected"].samples
    }
    assert samples == {("kernel", "service_crash"): 1.0, ("gateway", "quota"): 2.0}


def test_merge_skips_a_part_that_does_not_parse() -> None:
    text = merge_expositions(
        [("bad", "this is { not prometheus"), ("ok", Metrics().render().decode())]
    )
    assert b"inflight" in text


def test_status_classes() -> None:
    assert [status_class(s) for s in (200, 304, 429, 503)] == ["2xx", "3xx", "4xx", "5xx"]


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    rng = random.Random(1)
    for attempt, step in [(1, 0.1), (2, 0.2), (3, 0.4), (10, 30.0), (40, 30.0)]:
        d = backoff_delay(attempt, 0.1, 30.0, rng)
        assert step / 2 <= d <= step


def test_exit_reasons_name_the_code_or_signal() -> None:
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-9) == "killed by signal SIGKILL"


def test_request_tally_renders_exactly_what_direct_observation_does() -> None:
    """The gateway tallies its golden metrics and folds them in at each scrape; the
    exposition must be the one per-request prometheus updates would have produced."""
    direct, tallied = Metrics(), Metrics()
    tally = RequestTally(tallied)
    requests = [
        ("/o/{addr}", "GET", 200, 0.00031, 1024, 0),
        ("/o/{addr}", "GET", 200, 0.0001, 1024, 0),  # exactly on a bucket bound
        ("/o/{addr}", "HEAD", 304, 0.002, 0, 0),
        ("/put", "POST", 201, 0.75, 60, 4096),
        ("/put", "POST", 413, 31.0, 0, 100),  # past the last bound: +Inf
        ("/o/{addr}", "GET", 404, 0.0, 120, 0),
    ]

    def observe(m: Metrics, route: str, method: str, status: int, s: float, o: int, i: int) -> None:
        m.requests_total.labels(route, method, status_class(status)).inc()
        m.request_latency_seconds.labels(route).observe(s)
        if o:
            m.bytes_out_total.labels(route).inc(o)
        if i:
            m.bytes_in_total.labels(route).inc(i)

    for r in requests[:3]:
        observe(direct, *r)
        tally.add(*r)
    assert tallied.render() == direct.render()
    for r in requests[3:]:
        observe(direct, *r)
        tally.add(*r)
    assert tallied.render() == direct.render()
    assert tallied.render() == direct.render()  # a flush with nothing pending changes nothing


def test_a_tally_adder_folds_its_samples_as_they_pile_up() -> None:
    """Past FOLD_AT buffered values the adder folds on its own; nothing is lost or
    counted twice, whether the fold came from a request or from a scrape."""
    direct, tallied = Metrics(), Metrics()
    plain, pinned = RequestTally(direct), RequestTally(tallied)
    add_get = pinned.adder("/o/{addr}", "GET", 200)
    for i in range(FOLD_AT // 2 * 2 + 3):  # two folds in the request path, then a rest
        elapsed = 2.0 ** -(i % 20 + 1)
        plain.add("/o/{addr}", "GET", 200, elapsed, 1000 + i, 0)
        add_get(elapsed, 1000 + i)
    assert tallied.render() == direct.render()


def test_a_pinned_tally_adder_counts_like_add_across_scrapes() -> None:
    """The fast lane's adder keeps one entry across flushes; each scrape must still see
    every request once, mixed with add() calls for the same series."""
    direct, tallied = Metrics(), Metrics()
    plain, pinned = RequestTally(direct), RequestTally(tallied)
    add_get = pinned.adder("/o/{addr}", "GET", 200)
    # Binary fractions: sums are exact in any order, so the texts compare equal.
    rounds = [[2**-13, 2**-11], [], [2**-9, 31.0, 0.0]]
    for elapsed in rounds:
        for i, s in enumerate(elapsed):
            plain.add("/o/{addr}", "GET", 200, s, 1024, 0)
            add_get(s, 1024)
            if i == 0:  # the ordinary path adding to the same series
                plain.add("/o/{addr}", "GET", 204, s, 0, 10)
                pinned.add("/o/{addr}", "GET", 204, s, 0, 10)
        assert tallied.render() == direct.render()
