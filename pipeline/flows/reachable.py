"""Can the clusters a config names be reached? Checked before any stage runs.

A ``spark.master`` or ``ray.address`` that nothing answers is a configuration error, not a crash
after a minute of Spark's and Ray's own retries: :func:`check_clusters_reachable` opens a TCP
connection to each address it names and raises :class:`ConfigError` (one line naming the key and
the address, exit 2) when none answers within the key's ``connect_timeout_s`` (default 30 s).

- ``spark.master``: ``spark://host:port`` (standalone; ``spark://h1:p1,h2:p2`` for a standby
  master, any one answering is enough) and ``k8s://https://host:port`` (the API server) are
  checked. ``local[...]``, ``yarn`` (its address is in the Hadoop configuration) and an unset
  master (spark-submit's ``--master``, else ``local[*]``) are not.
- ``ray.address``: ``host:port`` (the GCS) and ``ray://host:port`` (Ray Client) are checked;
  ``auto`` resolves as ``ray.init`` does, from ``RAY_ADDRESS`` or the address that ``ray start``
  wrote on this node (``$RAY_TMPDIR``, else ``$TMPDIR``, else ``/tmp``, then
  ``ray/ray_current_cluster``). Unset means a private local Ray: nothing to check.

An address that answers is not proven to be the right service; the engines report that
themselves when they connect.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Callable, Optional

from pipeline.config import Config
from pipeline.errors import ConfigError

Endpoint = tuple[str, int]


def _host_port(text: str, default_port: Optional[int] = None) -> Endpoint:
    """``host:port`` (an IPv6 host in brackets) without any scheme or path."""
    text = text.split("://", 1)[-1].split("/", 1)[0]
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not port and default_port is not None:
        return host, default_port
    if not host or not port.isdigit():
        raise ValueError(f"{text!r} is not host:port")
    return host, int(port)


def spark_endpoints(master: Optional[str]) -> list[Endpoint]:
    """The TCP endpoints behind a Spark master URL (empty: nothing to check)."""
    if not master:
        return []
    m = master.strip()
    if m.startswith("spark://"):
        return [_host_port(h, 7077) for h in m[len("spark://"):].split(",")]
    if m.startswith("k8s://"):
        api = m[len("k8s://"):]
        secure = not api.startswith("http://")
        return [_host_port(api, 443 if secure else 80)]
    return []   # local[...], local-cluster[...], yarn: no address of their own


def ray_address_file() -> str:
    """Where ``ray start`` records this node's cluster address (as Ray resolves it)."""
    tmp = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    return os.path.join(tmp, "ray", "ray_current_cluster")


def ray_endpoints(address: Optional[str]) -> list[Endpoint]:
    """The TCP endpoint behind ``ray.address`` (empty: a private local Ray)."""
    if not address or address == "local":
        return []
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS") or ""
        if not address:
            path = ray_address_file()
            if not os.path.isfile(path):
                raise ConfigError("config key 'ray.address': 'auto' finds no Ray cluster on this node (no "
                                  f"RAY_ADDRESS and no {path}); run it on a node where `ray start` ran, "
                                  "or name the head's address (host:6379 or ray://host:10001)")
            with open(path) as f:
                address = f.read().strip()
    return [_host_port(address, 10001 if address.startswith("ray://") else 6379)]


def wait_reachable(key: str, address: str, endpoints: list[Endpoint], timeout_s: float,
                   connect: Callable[..., socket.socket] = socket.create_connection) -> None:
    """Return once one of ``endpoints`` accepts a TCP connection; retry until ``timeout_s``.

    An unknown host name fails at once (waiting does not make it resolve); a refused or silent
    port is retried every second until the deadline. Raises :class:`ConfigError` naming ``key``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        last = None
        for host, port in endpoints:
            try:
                left = max(0.1, min(5.0, deadline - time.monotonic()))
                connect((host, port), timeout=left).close()
                return
            except socket.gaierror:
                raise ConfigError(f"config key '{key}': cannot reach {address}: unknown host {host!r}") from None
            except OSError as e:
                last = e.strerror or type(e).__name__
        left = deadline - time.monotonic()
        if left <= 0:
            raise ConfigError(f"config key '{key}': cannot reach {address} within {timeout_s:g} s "
                              f"({last}); is the cluster up? ({key.split('.')[0]}.connect_timeout_s sets the wait)")
        time.sleep(min(1.0, left))


def check_clusters_reachable(cfg: Config) -> None:
    """Raise :class:`ConfigError` unless every cluster ``cfg`` names answers (see the module doc)."""
    for key, address, section, find in (("spark.master", cfg.spark.master, cfg.spark, spark_endpoints),
                                        ("ray.address", cfg.ray.address, cfg.ray, ray_endpoints)):
        try:
            endpoints = find(address)
        except ValueError as e:
            raise ConfigError(f"config key '{key}': {address!r} is not an address ({e})") from None
        if endpoints:
            wait_reachable(key, str(address), endpoints, float(section.connect_timeout_s))


__all__ = ["check_clusters_reachable", "spark_endpoints", "ray_endpoints", "wait_reachable", "ray_address_file"]
