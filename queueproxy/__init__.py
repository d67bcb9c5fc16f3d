"""queue-proxy: the sidecar in front of every user container (breaker, stats, probes, drain)."""

from serving.native import extend_path as _extend_path

__path__ = _extend_path(__name__, __path__)
