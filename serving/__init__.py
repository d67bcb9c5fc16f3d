"""zeroscale's shared kernel: the Knative API model and what two or more components share."""

from serving.native import extend_path as _extend_path

__path__ = _extend_path(__name__, __path__)
