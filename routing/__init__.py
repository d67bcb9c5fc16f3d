"""routing: revisions by host and tag, traffic split by percent, gradual rollout."""
