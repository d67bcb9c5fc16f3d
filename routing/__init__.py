"""routing: revisions by host and tag, traffic split by percent, gradual rollout."""

from serving.native import extend_path as _extend_path

__path__ = _extend_path(__name__, __path__)
