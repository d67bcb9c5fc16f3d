"""Leader election on a coordination.k8s.io/v1 Lease, so that two autoscalers never both write scales.

The rules (those of client-go's leader election, which Knative's components use):
- A candidate takes the Lease when it is free (no holder) or when its record has not changed for
  ``leaseDurationSeconds`` *as measured on the candidate's own clock* since the candidate first saw
  that record. Clocks of different machines are never compared, only durations.
- Every write is an update with the ``resourceVersion`` just read: a 409 Conflict means another
  replica wrote first, and this one lost the round.
- The leader renews every ``retry_period``. It counts itself leader only until ``renew_deadline``
  after the *start* of its last successful renewal, and steps down when that passes.

Why this is safe: the leader's last renewal reached the server at some time T, after the renewal
started, so it stops leading before T + renew_deadline. Another replica can only have seen that
record at or after T, and waits lease_duration > renew_deadline after that. With Knative's 60 s /
40 s / 10 s, a leader that cannot renew stops at most 40 s after its last success, and a successor
starts at least 60 s after it: 20 s during which nobody writes.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from serving.clock import Clock, MonotonicClock, SystemClock

__all__ = ["LeaseElector", "micro_time"]

log = logging.getLogger("zeroscale.k8s.lease")

Sleep = Callable[[float], Awaitable[None]]
Callback = Callable[[], None]


def micro_time(unix: float) -> str:
    """A Kubernetes MicroTime: RFC 3339 with microseconds, UTC."""
    dt = datetime.datetime.fromtimestamp(unix, tz=datetime.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _stamp(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        return micro_time(value.timestamp())
    return str(value)


class LeaseElector:
    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: float = 60.0,
        renew_deadline: float = 40.0,
        retry_period: float = 10.0,
        clock: Clock | None = None,
        wall: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        on_started_leading: Callback | None = None,
        on_stopped_leading: Callback | None = None,
    ) -> None:
        if not identity:
            raise ValueError("leader election needs a non-empty identity (the pod name)")
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise ValueError(
                "leader election needs 0 < retry_period < renew_deadline < lease_duration, got "
                f"{retry_period} / {renew_deadline} / {lease_duration}"
            )
        self._coord = client.CoordinationV1Api(api)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._clock = clock or MonotonicClock()
        self._wall = wall or SystemClock()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._leading = False
        self._renewed_at = 0.0  # start of the last successful acquire/renew, on self._clock
        self._observed: tuple[str, str] | None = None  # (holder, resourceVersion) last seen
        self._observed_at = 0.0
        self.transitions = 0  # times this replica became leader

    # ---- what the rest of the autoscaler asks -----------------------------------------------------
    def remaining(self) -> float:
        """Seconds this replica is still sure to lead; 0 when it is not the leader."""
        if not self._leading:
            return 0.0
        return max(0.0, self._renewed_at + self.renew_deadline - self._clock.now())

    @property
    def is_leader(self) -> bool:
        return self.remaining() > 0

    # ---- the loop ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Campaign, lead and renew until cancelled; on cancellation, release the Lease if held."""
        try:
            while True:
                if self._leading:
                    await self._renew_round()
                else:
                    await self._campaign_round()
        finally:
            if self._leading:
                await asyncio.shield(self._release())

    async def _campaign_round(self) -> None:
        start = self._clock.now()
        if await self._attempt(timeout=self.renew_deadline) is True:
            self._leading = True
            self._renewed_at = start
            self.transitions += 1
            log.info("%s became the leader of lease %s/%s", self.identity, self.namespace, self.name)
            if self._on_started:
                self._on_started()
            return
        # client-go waits retry_period with up to 20 % jitter between candidate rounds
        await self._sleep(self.retry_period * (1.0 + 0.2 * self._rng.random()))

    async def _renew_round(self) -> None:
        await self._sleep(min(self.retry_period, self.remaining()))
        start = self._clock.now()
        result = await self._attempt(timeout=self.remaining()) if self.remaining() > 0 else None
        if result is True:
            self._renewed_at = start
            return
        if result is False or self.remaining() <= 0:  # someone else holds it, or the deadline passed
            self._step_down("lost the lease" if result is False else "could not renew before the deadline")

    def _step_down(self, why: str) -> None:
        self._leading = False
        self._observed = None
        log.warning("%s stopped leading lease %s/%s: %s", self.identity, self.namespace, self.name, why)
        if self._on_stopped:
            self._on_stopped()

    async def _attempt(self, timeout: float) -> bool | None:
        """One acquire-or-renew: True = we hold it now, False = another replica does, None = error."""
        try:
            async with asyncio.timeout(max(timeout, 0.001)):
                return await self._try_acquire_or_renew()
        except ApiException as e:
            log.warning("lease %s/%s: %s %s", self.namespace, self.name, e.status, e.reason)
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            log.warning("lease %s/%s: %s %s", self.namespace, self.name, type(e).__name__, e)
        except Exception:  # a surprise must not end the election loop: count it as a failed round
            log.exception("lease %s/%s: unexpected error", self.namespace, self.name)
        return None

    def _spec(self, acquire: str | None, transitions: int) -> dict[str, Any]:
        now = micro_time(self._wall.now())
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.lease_duration)),
            "acquireTime": acquire or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    async def _try_acquire_or_renew(self) -> bool:
        try:
            lease = await self._coord.read_namespaced_lease(self.name, self.namespace)
        except ApiException as e:
            if e.status != 404:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(None, 0),
            }
            try:
                await self._coord.create_namespaced_lease(self.namespace, body)  # type: ignore[arg-type]
            except ApiException as ce:
                if ce.status == 409:  # another replica created it first
                    return False
                raise
            return True
        spec = lease.spec or client.V1LeaseSpec()
        holder = spec.holder_identity or ""
        rv = lease.metadata.resource_version or ""
        now = self._clock.now()
        if self._observed != (holder, rv):
            self._observed, self._observed_at = (holder, rv), now
        duration = float(spec.lease_duration_seconds or self.lease_duration)
        if holder and holder != self.identity and now < self._observed_at + duration:
            return False
        if holder == self.identity:
            new_spec = self._spec(_stamp(spec.acquire_time), int(spec.lease_transitions or 0))
        else:
            new_spec = self._spec(None, int(spec.lease_transitions or 0) + (1 if holder else 0))
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace, "resourceVersion": rv},
            "spec": new_spec,
        }
        try:
            await self._coord.replace_namespaced_lease(self.name, self.namespace, body)  # type: ignore[arg-type]
        except ApiException as e:
            if e.status == 409:  # someone wrote between our read and our write
                return False
            raise
        return True

    async def _release(self) -> None:
        """Give the Lease up on shutdown so that a successor need not wait out the lease duration."""
        self._leading = False
        try:
            async with asyncio.timeout(2.0):
                lease = await self._coord.read_namespaced_lease(self.name, self.namespace)
                if lease.spec is None or lease.spec.holder_identity != self.identity:
                    return
                body = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": self.name,
                        "namespace": self.namespace,
                        "resourceVersion": lease.metadata.resource_version,
                    },
                    "spec": {
                        "leaseDurationSeconds": 1,
                        "renewTime": micro_time(self._wall.now()),
                        "leaseTransitions": int(lease.spec.lease_transitions or 0),
                    },
                }
                await self._coord.replace_namespaced_lease(self.name, self.namespace, body)  # type: ignore[arg-type]
                log.info("%s released lease %s/%s", self.identity, self.namespace, self.name)
        except (ApiException, TimeoutError, aiohttp.ClientError, OSError) as e:
            log.warning("releasing lease %s/%s failed: %s", self.namespace, self.name, e)
        finally:
            if self._on_stopped:
                self._on_stopped()
