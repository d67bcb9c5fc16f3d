"""cluster: where pods come from (local processes or Kubernetes) and the zeroscale command."""
