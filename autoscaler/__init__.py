"""autoscaler: Knative's KPA (stable and panic windows, rate limits, scale to zero, burst capacity)."""
