"""Pure parts of the h2c stack: the frame guard, its token bucket, the protocol sniffer and H2Limits."""

from __future__ import annotations

import struct

import pytest

from serving.h2_guard import (
    ENHANCE_YOUR_CALM,
    FRAME_SIZE_ERROR,
    PREFACE,
    PROTOCOL_ERROR,
    FrameScanner,
    GoAway,
    GuardError,
    ResetRatio,
    TokenBucket,
    goaway_frame,
)
from serving.h2_upgrade import H1, H2, UPGRADE, WAIT, sniff
from serving.h2server import H2Limits
from tests.fakes.grpc_frames import CONTINUATION, DATA, END_HEADERS, HEADERS, PING, SETTINGS, frame


def _scanner(burst: int = 10, rate: float = 1.0, preface: bool = True) -> FrameScanner:
    return FrameScanner(
        max_frame_size=16384, max_header_block=1000, bucket=TokenBucket(rate, burst), preface=preface
    )


def test_token_bucket_burst_then_rate() -> None:
    b = TokenBucket(rate=2.0, burst=3)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.take(0.4) is False  # 0.8 tokens
    assert b.take(0.5) is True  # 1.0 token
    assert [b.take(100.0) for _ in range(4)] == [True, True, True, False]  # never more than the burst


def test_scanner_passes_a_valid_stream_unchanged_at_any_split() -> None:
    stream = (
        PREFACE
        + frame(SETTINGS, 0, 0)
        + frame(HEADERS, END_HEADERS, 1, b"h" * 40)
        + frame(DATA, 1, 1, b"d" * 3000)
    )
    for step in (1, 7, 9, 100, len(stream)):
        sc = _scanner()
        out = b"".join(sc.feed(stream[i : i + step], 0.0)[0] for i in range(0, len(stream), step))
        assert out == stream


def test_scanner_takes_goaway_out_at_any_split() -> None:
    before = PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS, 1, b"h" * 40)
    after = frame(DATA, 1, 1, b"d" * 3000) + frame(PING, 0, 0, b"12345678")
    stream = before + goaway_frame(1, 0, b"later") + after
    for step in (1, 2, 5, 9, 10, 17, 64, len(stream)):
        sc = _scanner()
        outs, goaways = [], []
        for i in range(0, len(stream), step):
            out, got = sc.feed(stream[i : i + step], 0.0)
            outs.append(out)
            goaways += got
        assert b"".join(outs) == before + after, step
        assert goaways == [GoAway(1, 0, b"later")]


def test_scanner_takes_goaway_out_and_reports_it() -> None:
    sc = _scanner(preface=False)
    data = frame(PING, 0, 0, b"12345678") + goaway_frame(7, 0, b"bye") + frame(DATA, 1, 7, b"x")
    out, goaways = sc.feed(data, 0.0)
    assert out == frame(PING, 0, 0, b"12345678") + frame(DATA, 1, 7, b"x")
    assert goaways == [GoAway(7, 0, b"bye")]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param(
            struct.pack(">I", 16385)[1:] + b"\x00\x00\x00\x00\x00\x01",
            FRAME_SIZE_ERROR,
            id="oversized-header-only",
        ),
        pytest.param(
            frame(HEADERS, 0, 1, b"h" * 600) + frame(CONTINUATION, 0, 1, b"c" * 600),
            ENHANCE_YOUR_CALM,
            id="block-too-big",
        ),
        pytest.param(
            frame(HEADERS, 0, 1, b"h" * 10) + frame(DATA, 0, 1, b"x"), PROTOCOL_ERROR, id="data-inside-block"
        ),
        pytest.param(
            frame(HEADERS, 0, 1, b"h") + goaway_frame(0, 0), PROTOCOL_ERROR, id="goaway-inside-block"
        ),
        pytest.param(frame(PING, 0, 0, b"12345678") * 11, ENHANCE_YOUR_CALM, id="ping-flood"),
        pytest.param(frame(DATA, 0, 1) * 11, ENHANCE_YOUR_CALM, id="empty-data-flood"),
        pytest.param(frame(0x42, 0, 0) * 11, ENHANCE_YOUR_CALM, id="unknown-frame-flood"),
        pytest.param(frame(7, 0, 3, b"\x00" * 8), PROTOCOL_ERROR, id="goaway-on-a-stream"),
        pytest.param(frame(7, 0, 0, b"\x00" * 4), FRAME_SIZE_ERROR, id="goaway-too-short"),
    ],
)
def test_scanner_limits(data: bytes, code: int) -> None:
    sc = _scanner(preface=False)
    with pytest.raises(GuardError) as err:
        sc.feed(data, 0.0)
    assert err.value.code == code


def test_flood_budget_refills_with_time() -> None:
    sc = _scanner(burst=10, rate=10.0, preface=False)
    ping = frame(PING, 0, 0, b"12345678")
    for second in range(5):  # 10 a second for 5 s is within the rate
        sc.feed(ping * 10, float(second))
    with pytest.raises(GuardError):
        sc.feed(ping * 11, 5.0)


def test_reset_ratio() -> None:
    r = ResetRatio(min_streams=10, window=100)
    assert all(r.record(i % 2 == 1) for i in range(99))  # half and half is tolerated
    r = ResetRatio(min_streams=10, window=100)
    assert all(r.record(True) for _ in range(9))  # too few streams to judge
    assert r.record(True) is False
    r = ResetRatio(min_streams=10, window=100)
    for _ in range(10_000):
        assert r.record(False)
    results = [r.record(True) for _ in range(200)]  # a long good history decays: the attack shows
    assert False in results and results.index(False) < 150


def test_rst_stream_is_not_rate_limited() -> None:
    sc = _scanner(burst=1, preface=False)
    sc.feed(frame(3, 0, 1, b"\x00\x00\x00\x08") * 1000, 0.0)


def test_data_frames_with_payload_cost_nothing() -> None:
    sc = _scanner(burst=1, preface=False)
    sc.feed(frame(DATA, 0, 1, b"x") * 1000 + frame(HEADERS, END_HEADERS, 3, b"h"), 0.0)


PRIOR = PREFACE + b"\x00\x00"
UPGRADE_GET = (
    b"GET /a?b HTTP/1.1\r\nHost: svc.example\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nX-Id: 7\r\nTE: trailers\r\n\r\n"
)


@pytest.mark.parametrize(
    ("buf", "kind"),
    [
        pytest.param(PREFACE[:10], WAIT, id="preface-so-far"),
        pytest.param(PRIOR, H2, id="prior-knowledge"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n", WAIT, id="head-incomplete"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", H1, id="plain-http1"),
        pytest.param(b"GET /" + b"a" * 300 + b" HTTP/1.1\r\n", H1, id="head-over-limit"),
        pytest.param(UPGRADE_GET, UPGRADE, id="h2c-upgrade"),
        pytest.param(UPGRADE_GET.replace(b"HTTP/1.1\r\n", b"HTTP/1.0\r\n", 1), H1, id="upgrade-on-http10"),
        pytest.param(UPGRADE_GET.replace(b"Upgrade, ", b""), H1, id="connection-lacks-upgrade"),
        pytest.param(UPGRADE_GET.replace(b"X-Id: 7", b"X-Id:\n 7"), H1, id="bare-lf-left-to-http1"),
    ],
)
def test_sniff(buf: bytes, kind: str) -> None:
    assert sniff(buf, 200).kind == kind


def test_sniff_upgrade_request_fields() -> None:
    got = sniff(UPGRADE_GET + b"PRI", 4096)
    assert got.kind == UPGRADE and got.data == b"PRI" and got.upgrade is not None
    assert (got.upgrade.method, got.upgrade.target, got.upgrade.settings) == (
        b"GET",
        b"/a?b",
        b"AAMAAABkAAQAAP__",
    )
    assert got.upgrade.headers == [(b"host", b"svc.example"), (b"x-id", b"7"), (b"te", b"trailers")]


def test_sniff_upgrade_with_a_body_is_served_as_http1_without_the_upgrade() -> None:
    req = UPGRADE_GET.replace(b"GET", b"POST", 1).replace(b"X-Id: 7", b"Content-Length: 3") + b"abc"
    got = sniff(req, 4096)
    assert got.kind == H1
    assert b"upgrade" not in got.data.lower() and b"http2-settings" not in got.data.lower()
    assert got.data.startswith(b"POST /a?b HTTP/1.1\r\nhost: svc.example\r\n")
    assert got.data.endswith(b"content-length: 3\r\nte: trailers\r\n\r\nabc")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_concurrent_streams": 0}, "max_concurrent_streams"),
        ({"max_frame_size": 1000}, "max_frame_size"),
        ({"stream_window": 2**31}, "stream_window"),
        ({"control_frames_per_second": -1.0}, "control_frames_per_second"),
    ],
)
def test_limits_name_the_bad_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=f"H2Limits.{field}"):
        H2Limits(**kwargs)  # type: ignore[arg-type]
