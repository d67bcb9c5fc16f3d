"""The keep-alive race (Knative serving#12414): the app closes an idle connection just as the proxy
reuses it. The queue-proxy must retry such a request on a fresh connection, not answer 502.

The app (fault_app) closes every connection 10 ms after its last answer; the clients pause around
those 10 ms between requests, so that many requests go out on a pooled connection the app is closing.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.activator.procs import Procs
from tests.fakes import hostile
from tests.faults.load import Load
from tests.faults.stack import start_pod

pytestmark = pytest.mark.e2e


async def test_requests_on_connections_the_app_is_closing_do_not_fail(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    try:
        pod = start_pod(procs, "web-00001", app_args=("--keepalive-ms", "10"))
        rng = random.Random(8)
        load = Load(
            pod.port,
            "h",
            lambda i: f"/sleep?ms=0&id={i}",
            workers=4,
            max_requests=600,
            think=lambda: rng.uniform(0.020, 0.060),
        )
        load.start()
        await load.more(600, timeout=60)
        await load.stop()
        words = pod.log.read_text().split()
        conns = json.loads(hostile.request(pod.app_port, "GET", "/inflight", "h").body)["connections"]
    finally:
        procs.close()
    assert load.sent == len(load.results) == 600
    assert load.failed == [], (load.statuses, [r.body[:80] for r in load.failed[:5]])
    assert words.count("S") == words.count("E") == 600  # each reached the app once: no double send
    # The app did close connections under the proxy: most requests needed a new one.
    assert conns >= 120, conns
    print(f"keep-alive race: {load.summary()}; the app accepted {conns} connections")
