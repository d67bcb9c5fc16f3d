"""queue-proxy: the sidecar in front of every user container (breaker, stats, probes, drain)."""
