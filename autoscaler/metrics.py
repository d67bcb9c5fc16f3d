"""Prometheus series of the autoscaler's decisions, per revision (Knative's autoscaler_* names).

Knative's older OpenCensus names are kept so that existing dashboards work: ``autoscaler_desired_pods``,
``autoscaler_excess_burst_capacity``, ``autoscaler_panic_mode``, ``autoscaler_stable_request_concurrency``
and ``autoscaler_panic_request_concurrency`` (or ``..._requests_per_second`` for the rps metric), with
``namespace_name`` and ``revision_name`` labels.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from serving.types import RevisionKey

from .multiscaler import Decision

__all__ = ["AutoscalerMetrics"]

_LABELS = ("namespace_name", "revision_name")


class AutoscalerMetrics:
    """A decision listener: ``multiscaler.add_listener(metrics.observe)``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def g(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, _LABELS, registry=registry)

        self.desired = g("autoscaler_desired_pods", "Pods the decider wants for the revision")
        self.requested = g("autoscaler_requested_pods", "Pods the autoscaler last asked the scaler for")
        self.ready = g("autoscaler_actual_pods", "Ready pods of the revision")
        self.ebc = g("autoscaler_excess_burst_capacity", "Excess burst capacity (< 0: activator in path)")
        self.panic = g("autoscaler_panic_mode", "1 while the revision's decider is in panic mode")
        self.activator = g("autoscaler_activator_in_path", "1 while the activator is in the request path")
        self.activators = g("autoscaler_activators_needed", "Activators the revision's burst capacity needs")
        self.stable_conc = g("autoscaler_stable_request_concurrency", "Concurrency over the stable window")
        self.panic_conc = g("autoscaler_panic_request_concurrency", "Concurrency over the panic window")
        self.target_conc = g("autoscaler_target_concurrency_per_pod", "Target concurrency per pod")
        self.stable_rps = g("autoscaler_stable_requests_per_second", "Average RPS over the stable window")
        self.panic_rps = g("autoscaler_panic_requests_per_second", "Average RPS over the panic window")
        self.target_rps = g("autoscaler_target_requests_per_second", "Target RPS per pod")

    def observe(self, d: Decision) -> None:
        labels = (d.revision.namespace, d.revision.name)
        if d.decided >= 0:
            self.desired.labels(*labels).set(d.decided)  # the decider's number, as Knative records it
        if d.applied:
            self.requested.labels(*labels).set(d.want)
        if d.ready_pods is not None:
            self.ready.labels(*labels).set(d.ready_pods)
        self.ebc.labels(*labels).set(d.excess_burst_capacity)
        self.panic.labels(*labels).set(1 if d.in_panic else 0)
        self.activator.labels(*labels).set(1 if d.activator_in_path else 0)
        self.activators.labels(*labels).set(d.num_activators)
        stable, panic, target = (
            (self.stable_rps, self.panic_rps, self.target_rps)
            if d.metric == "rps"
            else (self.stable_conc, self.panic_conc, self.target_conc)
        )
        target.labels(*labels).set(d.target)
        if d.observed_stable is not None:
            stable.labels(*labels).set(d.observed_stable)
        if d.observed_panic is not None:
            panic.labels(*labels).set(d.observed_panic)

    def forget(self, revision: RevisionKey) -> None:
        labels = (revision.namespace, revision.name)
        for gauge in vars(self).values():
            if isinstance(gauge, Gauge):
                try:
                    gauge.remove(*labels)
                except KeyError:
                    pass
