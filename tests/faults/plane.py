"""The local data plane composed in the test's own loop: real pods, the real gateway, the test scales.

What ``zeroscale up`` wires, minus the autoscaler: :class:`cluster.local.LocalRuntime` runs pods
(``tests/fakes/fault_app.py`` behind a real ``python -m queueproxy`` each, on free loopback ports),
:class:`cluster.gateway_app.GatewayApp` (routing + activator, on the engine) listens on 127.0.0.1 and
finds the pods through the runtime. The test decides the scale and the routes, so each fault lands
exactly when it wants, and it knows to the event-loop step when a route changed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from cluster.gateway_app import GatewayApp
from cluster.local import LocalPod, LocalRuntime, PodSettings, PodState
from routing.table import RouteSpec, RouteTable, TableHolder
from routing.traffic import Flattened, Split, Target
from serving.spec import Revision, RevisionHistory, parse_services
from serving.types import RevisionKey
from tests.conftest import ROOT
from tests.util import until

FAULT_APP = ROOT / "tests" / "fakes" / "fault_app.py"
DOMAIN = "example.com"
SETTINGS = PodSettings(ready_timeout=30.0, drain_quiet_period=0.3, kill_grace=2.0)


def service_yaml(name: str, version: int, log_dir: Path, cc: int = 0, timeout: int = 30) -> str:
    return f"""apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  template:
    spec:
      containerConcurrency: {cc}
      timeoutSeconds: {timeout}
      containers:
        - command: [python3, {FAULT_APP}]
          env:
            - name: FAULT_LOG_DIR
              value: "{log_dir}"
            - name: VERSION
              value: "{version}"
"""


class LocalPlane:
    def __init__(self, tmp: Path, settings: PodSettings = SETTINGS) -> None:
        self.tmp = tmp
        self.runtime = LocalRuntime(settings)
        self.holder = TableHolder(RouteTable([], domain=DOMAIN))
        self.gateway = GatewayApp(self.holder, self.runtime, lambda _stats: None)
        self.history = RevisionHistory()
        self.port = 0
        self.route_log: list[tuple[float, frozenset[str]]] = []  # (monotonic time, revisions named)

    async def start(self) -> None:
        self.port = await self.gateway.start("127.0.0.1", 0)

    async def close(self) -> None:
        try:
            await self.gateway.shutdown(5.0)
        finally:
            await self.runtime.close(timeout=15.0)

    def host(self, service: str) -> str:
        return f"{service}.default.{DOMAIN}"

    def revision(self, service: str, version: int, cc: int = 0, timeout: int = 30) -> Revision:
        """A revision of ``service`` (a new one per version), known to the runtime and the gateway."""
        text = service_yaml(service, version, self.tmp, cc, timeout)
        (svc,) = parse_services(text, f"{service}-v{version}.yaml", base_dir=ROOT)
        rev, _ = self.history.admit(svc)
        t = rev.template
        self.runtime.add_revision(rev)
        self.gateway.add_revision(
            rev.key, t.container_concurrency, timeout_seconds=t.timeout_seconds, idle_timeout_seconds=0.0
        )
        return rev

    def route(self, service: str, split: Mapping[str, int]) -> None:
        """Swap in a table where ``service`` sends ``split`` (revision name -> percent)."""
        targets = tuple(Target(name, pct) for name, pct in split.items() if pct > 0)
        spec = RouteSpec(service, "default", Flattened(Split(targets), {}))
        self.holder.swap(RouteTable([spec], domain=DOMAIN))
        self.route_log.append((time.monotonic(), frozenset(t.revision for t in targets)))

    def allowed(self, start: float, end: float) -> frozenset[str]:
        """Every revision some route in effect between ``start`` and ``end`` named."""
        out: set[str] = set()
        current: frozenset[str] = frozenset()
        for t, revs in self.route_log:
            if t <= start:
                current = revs
            elif t <= end:
                out |= revs
        return frozenset(out | current)

    async def scale(self, key: RevisionKey, n: int) -> None:
        await self.runtime.scale(key, n)

    def pods(self, key: RevisionKey) -> list[LocalPod]:
        return self.runtime.pods(key)

    def ready(self, key: RevisionKey) -> list[LocalPod]:
        return [p for p in self.runtime.pods(key) if p.state is PodState.READY]

    async def wait_pods(
        self, key: RevisionKey, ready: int, total: int | None = None, timeout: float = 40
    ) -> None:
        """Until ``ready`` pods are ready and (if given) ``total`` exist in all."""

        def done() -> bool:
            return len(self.ready(key)) == ready and (total is None or len(self.pods(key)) == total)

        await until(done, timeout=timeout, interval=0.05, what=f"{key}: {ready} ready of {total}")

    async def healthy_in_gateway(self, key: RevisionKey, n: int, timeout: float = 20) -> None:
        """Until the activator has probed ``n`` pods of ``key`` healthy (they get traffic from then on)."""
        await until(lambda: len(self.gateway.activator.healthy(key)) == n, timeout=timeout, interval=0.02)
