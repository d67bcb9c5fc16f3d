"""Knative's header names and the hop-by-hop rules of RFC 9110 section 7.6.1, in one place.

Header names here are lower-case bytes: the request path compares raw parsed names, case-folded once.
"""

from __future__ import annotations

__all__ = [
    "ACTIVATOR_PROBE_UA",
    "AUTOSCALING_PROBE_UA",
    "CLIENT_FORBIDDEN_PREFIXES",
    "COLD_START",
    "FORWARDED",
    "HOP_BY_HOP",
    "KUBE_PROBE_UA",
    "K_KUBELET_PROBE",
    "K_NETWORK_HASH",
    "K_NETWORK_PROBE",
    "K_ORIGINAL_HOST",
    "K_PROXY_REQUEST",
    "NOT_SENT",
    "SERVING_DEFAULT_ROUTE",
    "SERVING_NAMESPACE",
    "SERVING_REVISION",
    "SERVING_TAG",
    "X_FORWARDED_FOR",
    "X_FORWARDED_HOST",
    "X_FORWARDED_PROTO",
    "connection_tokens",
    "is_internal_header",
]

K_PROXY_REQUEST = b"k-proxy-request"  # value "activator": the request came through the activator
K_ORIGINAL_HOST = b"k-original-host"  # the client's Host, kept while the activator addresses a pod
K_NETWORK_PROBE = b"k-network-probe"  # "queue" (readiness through the QP), "activator", "probe"
K_NETWORK_HASH = b"k-network-hash"
K_KUBELET_PROBE = b"k-kubelet-probe"
SERVING_REVISION = b"knative-serving-revision"
SERVING_NAMESPACE = b"knative-serving-namespace"
SERVING_TAG = b"knative-serving-tag"
SERVING_DEFAULT_ROUTE = b"knative-serving-default-route"
FORWARDED = b"forwarded"
X_FORWARDED_FOR = b"x-forwarded-for"
X_FORWARDED_HOST = b"x-forwarded-host"
X_FORWARDED_PROTO = b"x-forwarded-proto"
COLD_START = b"x-zeroscale-cold-start"
# On a queue-proxy's 502: its connect to the user container failed, so nothing of the request reached
# the app and the activator may send it to another pod (a pod still listed after its app died).
NOT_SENT = b"k-zeroscale-not-sent"

KUBE_PROBE_UA = b"kube-probe/"
ACTIVATOR_PROBE_UA = b"Knative-Activator-Probe"
AUTOSCALING_PROBE_UA = b"Knative-Autoscaling-Probe"

# Fields a proxy must not forward (RFC 9110 7.6.1), plus the obsolete Proxy-Connection. Transfer-Encoding
# and Upgrade are framing of this hop: the proxy re-frames bodies itself and handles upgrades explicitly.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

# Internal headers that only the data plane itself may set; the gateway drops them from clients.
CLIENT_FORBIDDEN_PREFIXES = (b"knative-serving-", b"k-")


def is_internal_header(lower_name: bytes) -> bool:
    return lower_name.startswith(CLIENT_FORBIDDEN_PREFIXES)


def connection_tokens(value: bytes) -> set[bytes]:
    """The field names listed in a Connection header value, lower-cased."""
    return {t.strip().lower() for t in value.split(b",") if t.strip()}
