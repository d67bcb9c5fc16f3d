"""The Stat message the autoscaler consumes, in Knative's protobuf wire format.

Field numbers follow Knative's ``metrics.Stat`` (pod_name 1, average_concurrent_requests 2,
average_proxied_concurrent_requests 3, request_count 4, proxied_request_count 5, process_uptime 6,
timestamp 7) and ``WireStatMessages`` (messages 1: namespace 1, name 2, stat 3), so a Knative
autoscaler can read our queue-proxy and ours can read Knative's. The descriptor is built at import
time with the protobuf runtime; no protoc step is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = [
    "PROTOBUF_CONTENT_TYPE",
    "Stat",
    "WireStat",
    "decode_stat",
    "decode_wire_stats",
    "encode_stat",
    "encode_wire_stats",
]

PROTOBUF_CONTENT_TYPE = "application/protobuf"

_F = descriptor_pb2.FieldDescriptorProto


def _build() -> tuple[type, type]:
    fdp = descriptor_pb2.FileDescriptorProto(name="zeroscale/stat.proto", package="zeroscale.metrics")
    fdp.syntax = "proto3"
    stat = fdp.message_type.add(name="Stat")
    for number, name, ftype in (
        (1, "pod_name", _F.TYPE_STRING),
        (2, "average_concurrent_requests", _F.TYPE_DOUBLE),
        (3, "average_proxied_concurrent_requests", _F.TYPE_DOUBLE),
        (4, "request_count", _F.TYPE_DOUBLE),
        (5, "proxied_request_count", _F.TYPE_DOUBLE),
        (6, "process_uptime", _F.TYPE_DOUBLE),
        (7, "timestamp", _F.TYPE_INT64),
    ):
        stat.field.add(name=name, number=number, type=ftype, label=_F.LABEL_OPTIONAL)
    wire = fdp.message_type.add(name="WireStatMessage")
    wire.field.add(name="namespace", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    wire.field.add(name="name", number=2, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    wire.field.add(
        name="stat",
        number=3,
        type=_F.TYPE_MESSAGE,
        label=_F.LABEL_OPTIONAL,
        type_name=".zeroscale.metrics.Stat",
    )
    many = fdp.message_type.add(name="WireStatMessages")
    many.field.add(
        name="messages",
        number=1,
        type=_F.TYPE_MESSAGE,
        label=_F.LABEL_REPEATED,
        type_name=".zeroscale.metrics.WireStatMessage",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("zeroscale.metrics.Stat")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("zeroscale.metrics.WireStatMessages")),
    )


_StatPB, _WireStatsPB = _build()


@dataclass(frozen=True, slots=True)
class Stat:
    pod_name: str = ""
    average_concurrent_requests: float = 0.0
    average_proxied_concurrent_requests: float = 0.0
    request_count: float = 0.0
    proxied_request_count: float = 0.0
    process_uptime: float = 0.0
    timestamp: int = 0


@dataclass(frozen=True, slots=True)
class WireStat:
    """A Stat addressed to one revision: what the activator streams to the autoscaler."""

    namespace: str
    name: str
    stat: Stat


_FIELDS = (
    "pod_name",
    "average_concurrent_requests",
    "average_proxied_concurrent_requests",
    "request_count",
    "proxied_request_count",
    "process_uptime",
    "timestamp",
)


def _fill(pb: object, stat: Stat) -> None:
    for field in _FIELDS:
        setattr(pb, field, getattr(stat, field))


def _read(pb: object) -> Stat:
    return Stat(**{field: getattr(pb, field) for field in _FIELDS})


def encode_stat(stat: Stat) -> bytes:
    pb = _StatPB()
    _fill(pb, stat)
    return bytes(pb.SerializeToString())


def decode_stat(data: bytes) -> Stat:
    """Raise ValueError on bytes that are not a Stat."""
    pb = _StatPB()
    try:
        pb.ParseFromString(data)
    except Exception as e:  # protobuf's DecodeError and friends
        raise ValueError(f"not a Stat message: {e}") from e
    return _read(pb)


def encode_wire_stats(stats: list[WireStat]) -> bytes:
    pb = _WireStatsPB()
    for ws in stats:
        m = pb.messages.add()
        m.namespace = ws.namespace
        m.name = ws.name
        _fill(m.stat, ws.stat)
    return bytes(pb.SerializeToString())


def decode_wire_stats(data: bytes) -> list[WireStat]:
    """Raise ValueError on bytes that are not a WireStatMessages."""
    pb = _WireStatsPB()
    try:
        pb.ParseFromString(data)
    except Exception as e:
        raise ValueError(f"not a WireStatMessages message: {e}") from e
    return [WireStat(m.namespace, m.name, _read(m.stat)) for m in pb.messages]
