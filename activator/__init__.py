"""activator: buffers requests for revisions short of capacity and load-balances over ready pods."""

from serving.native import extend_path as _extend_path

__path__ = _extend_path(__name__, __path__)
