from __future__ import annotations

import pytest

from serving.stat import Stat, WireStat, decode_stat, decode_wire_stats, encode_stat, encode_wire_stats


def test_stat_round_trip_and_knative_field_numbers() -> None:
    s = Stat("pod-a", 1.5, 0.5, 3.0, 1.0, 10.0, 0)
    data = encode_stat(s)
    assert data.startswith(b"\x0a\x05pod-a")  # field 1, wire type 2 (length-delimited)
    assert b"\x11" + (1.5).hex().encode() not in data  # sanity: doubles are binary, not text
    assert decode_stat(data) == s


def test_wire_stats_round_trip() -> None:
    batch = [WireStat("default", "hello-00001", Stat("activator-0", 2.0, 0, 4.0, 0, 0, 1700000000))]
    assert decode_wire_stats(encode_wire_stats(batch)) == batch


def test_garbage_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        decode_stat(b"\xff\xff\xff")
