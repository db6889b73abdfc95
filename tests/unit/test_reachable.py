"""The cluster addresses a config names are checked with real TCP connections before any stage."""
from __future__ import annotations

import socket
import time

import pytest

from pipeline.config import config_from_dict
from pipeline.errors import ConfigError
from pipeline.flows.reachable import check_clusters_reachable, ray_endpoints, spark_endpoints, wait_reachable


@pytest.fixture
def listening():
    """A real listening socket on 127.0.0.1: (host, port)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s.getsockname()
    s.close()


@pytest.fixture
def refused():
    """A port on 127.0.0.1 that nothing listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return ("127.0.0.1", port)


def test_spark_master_urls_name_their_endpoints():
    assert spark_endpoints("spark://m:7077") == [("m", 7077)]
    assert spark_endpoints("spark://a:7077,b:7078") == [("a", 7077), ("b", 7078)]
    assert spark_endpoints("spark://m") == [("m", 7077)]
    assert spark_endpoints("k8s://https://api.example:6443") == [("api.example", 6443)]
    assert spark_endpoints("k8s://https://api.example") == [("api.example", 443)]
    for nothing in (None, "", "local[*]", "local[2]", "local-cluster[2,1,1024]", "yarn"):
        assert spark_endpoints(nothing) == []


def test_ray_addresses_resolve_as_ray_init_does(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert ray_endpoints(None) == [] and ray_endpoints("local") == []
    assert ray_endpoints("10.0.0.5:6379") == [("10.0.0.5", 6379)]
    assert ray_endpoints("ray://head:10001") == [("head", 10001)]
    assert ray_endpoints("ray://head") == [("head", 10001)]
    with pytest.raises(ConfigError, match=r"ray\.address.*'auto' finds no Ray cluster"):
        ray_endpoints("auto")
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:6380\n")
    assert ray_endpoints("auto") == [("127.0.0.1", 6380)]
    monkeypatch.setenv("RAY_ADDRESS", "10.1.1.1:6379")      # what `ray job submit` gives its driver
    assert ray_endpoints("auto") == [("10.1.1.1", 6379)]


def test_a_listening_address_passes_at_once(listening):
    t0 = time.monotonic()
    wait_reachable("spark.master", "spark://x", [listening], timeout_s=5)
    assert time.monotonic() - t0 < 1


def test_a_refused_address_fails_within_the_wait_naming_key_and_address(refused):
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as e:
        wait_reachable("ray.address", f"{refused[0]}:{refused[1]}", [refused], timeout_s=2)
    took = time.monotonic() - t0
    assert 2 <= took < 5, took
    msg = str(e.value)
    assert "ray.address" in msg and f"127.0.0.1:{refused[1]}" in msg and "within 2 s" in msg
    assert "\n" not in msg


def test_an_unknown_host_fails_without_waiting():
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"spark\.master.*unknown host 'no-such-host\.invalid'"):
        wait_reachable("spark.master", "spark://no-such-host.invalid:7077", [("no-such-host.invalid", 7077)], 30)
    assert time.monotonic() - t0 < 10


def test_a_standby_master_that_answers_is_enough(listening, refused):
    wait_reachable("spark.master", "spark://a,b", [refused, listening], timeout_s=3)


def test_a_master_that_comes_up_during_the_wait_passes(refused):
    """Retried until the deadline: a cluster still starting is not an error."""
    import threading

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

    def start_late():
        time.sleep(1.5)
        server.bind(refused)
        server.listen(1)

    t = threading.Thread(target=start_late)
    t.start()
    try:
        wait_reachable("ray.address", "late", [refused], timeout_s=10)
    finally:
        t.join()
        server.close()


def test_the_config_check_uses_each_sections_timeout(refused):
    cfg = config_from_dict({"spark": {"master": f"spark://{refused[0]}:{refused[1]}", "connect_timeout_s": 1.5}})
    with pytest.raises(ConfigError, match=r"'spark\.master'.*within 1\.5 s"):
        check_clusters_reachable(cfg)
    check_clusters_reachable(config_from_dict({}))   # local Spark, private Ray: nothing to reach
