import urllib.request

import pytest

from monitoring.metrics import CATALOGUE, Metrics, serve_metrics


def test_catalogue_names_are_unique_and_prefixed():
    names = [m.name for m in CATALOGUE]
    assert len(names) == len(set(names))
    assert all(n.startswith("plum_") for n in names)


def test_unknown_metric_is_an_error():
    with pytest.raises(KeyError, match="not in monitoring.metrics.CATALOGUE"):
        Metrics("simulator").counter("plum_made_up_total")


def test_metric_of_another_component_is_an_error():
    with pytest.raises(KeyError, match="belongs to 'simulator'"):
        Metrics("import").gauge("plum_simulator_videos")


def test_wrong_kind_is_an_error():
    with pytest.raises(TypeError, match="is a gauge"):
        Metrics("simulator").counter("plum_simulator_videos")


def test_two_components_in_one_process_do_not_collide():
    a, b = Metrics("simulator"), Metrics("simulator")
    a.counter("plum_simulator_events_total").labels(topic="t", kind="valid").inc(3)
    assert a.value("plum_simulator_events_total", topic="t", kind="valid") == 3
    assert b.value("plum_simulator_events_total", topic="t", kind="valid") == 0


def test_metrics_are_served_over_http():
    m = Metrics("simulator")
    m.gauge("plum_simulator_videos").set(12)
    server = serve_metrics(m, 0)
    try:
        body = (
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5)
            .read()
            .decode()
        )
    finally:
        server.close()
    assert "plum_simulator_videos 12.0" in body
    assert "# HELP plum_simulator_videos" in body
