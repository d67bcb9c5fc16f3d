"""zeroscale simulate: trace parsing errors name the line; replays run the real decisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoscaler.config import defaults, from_mapping, resolve
from autoscaler.simulate import SimPods, main, simulate
from autoscaler.trace import TraceError, parse_trace

ROOT = Path(__file__).resolve().parents[2]
SPIKE = ROOT / "examples" / "traces" / "spike.csv"
RPS = Path(__file__).parent / "data" / "rps_ready.csv"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("time,concurrency\n0,1\n", "trace:1: header", id="bad-header"),
        pytest.param("t,cpu\n0,1\n", "expected t,concurrency or t,rps", id="bad-metric"),
        pytest.param("t,concurrency,pods\n0,1,1\n", "unknown column(s) pods", id="bad-extra"),
        pytest.param("t,concurrency\n0,1\n1,lots\n", "trace:3: concurrency='lots' is not a number", id="nan"),
        pytest.param("t,concurrency\n0,1\n1,-2\n", "trace:3: concurrency='-2' must be", id="negative"),
        pytest.param("t,concurrency\n0,1\n2,1\n", "trace:3: t=2 follows t=0", id="gap"),
        pytest.param("t,concurrency\n0,1\n1\n", "trace:3: 1 values, the header has 2", id="short-row"),
        pytest.param(
            "t,rps,ready_pods\n0,1,1.5\n", "trace:2: ready_pods='1.5' must be a whole", id="ready-frac"
        ),
        pytest.param("# only a comment\nt,rps\n", "no data rows", id="no-rows"),
    ],
)
def test_trace_errors_name_the_line(text: str, fragment: str) -> None:
    with pytest.raises(TraceError) as e:
        parse_trace(text)
    assert fragment in str(e.value)


def test_trace_comments_and_blank_lines_keep_line_numbers() -> None:
    with pytest.raises(TraceError, match="trace:5:"):
        parse_trace("# note\nt,concurrency\n\n0,1\n1,x\n")


def test_sim_pods_follow_with_delay() -> None:
    pods = SimPods(1, 3.0)
    pods.scale(10.0, 4)
    assert pods.ready == 1
    pods.advance(12.0)
    assert pods.ready == 1
    pods.advance(13.0)
    assert pods.ready == 4
    pods.scale(14.0, 2)
    assert pods.ready == 2


def test_spike_trace_panics_scales_and_goes_to_zero() -> None:
    trace = parse_trace(SPIKE.read_text())
    ticks = simulate(trace, resolve(defaults(), {}, 0), pod_start_delay=1.0)
    assert [k.t for k in ticks if not k.poke] == [float(t) for t in range(0, 301, 2)]
    assert any(k.in_panic for k in ticks)
    assert max(k.want for k in ticks) == 6
    assert ticks[-1].want == 0 and ticks[-1].ready == 0 and ticks[-1].activator_in_path
    burst = [k for k in ticks if 80 <= k.t < 90]
    assert burst[-1].want > burst[0].want  # the panic window reacts inside the 10 s burst


def test_cold_start_poke_decides_between_ticks() -> None:
    scaling = resolve(defaults(), {"autoscaling.knative.dev/window": "6s"}, 0)
    trace = parse_trace("t,concurrency\n" + "".join(f"{t},{5 if t >= 41 else 0}\n" for t in range(50)))
    ticks = simulate(trace, scaling, pod_start_delay=2.0)
    # Inactive after a 6 s stable window; behind the activator (EBC < 0) for the 30 s grace: zero at 30.
    assert [(k.want, k.ready) for k in ticks if k.t in (28.0, 30.0, 32.0)] == [(0, 1), (0, 0), (0, 0)]
    pokes = [k for k in ticks if k.poke]
    assert [(k.t, k.want) for k in pokes] == [(41.0, 1)]  # decided on the odd second, not at 42
    assert ticks[-1].ready == 1


def test_unknown_scale_is_poked_too() -> None:
    """Knative pokes only a revision whose last decision was 0; a new one created at zero and never
    decided (-1) would wait for the next tick. zeroscale decides it at once: it is the same cold start."""
    cfg = from_mapping({"allow-zero-initial-scale": "true"})
    scaling = resolve(cfg, {"autoscaling.knative.dev/initial-scale": "0"}, 0)
    trace = parse_trace("t,concurrency\n" + "".join(f"{t},{5 if t >= 11 else 0}\n" for t in range(16)))
    ticks = simulate(trace, scaling, pod_start_delay=2.0)
    assert [(k.t, k.want) for k in ticks if k.poke] == [(11.0, 1)]  # at the first request, not at 12
    assert [(k.t, k.want) for k in ticks if k.t == 10.0] == [(10.0, -1)]


def test_main_prints_one_line_per_tick(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(RPS), "--annotations", "target=100", "window=10s"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# rps: target 70 of 100 per pod, stable window 10s, panic window 1s")
    assert out[1].split()[:3] == ["t", "rps", "ready"]
    rows = [line.split() for line in out[2:]]
    assert len(rows) == 20
    assert rows[6][:3] == ["12", "300.00", "1"]  # ready pods come from the trace
    assert "yes" in {r[5] for r in rows}


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        pytest.param(["--annotations", "target"], "expected KEY=VALUE", id="annotation-syntax"),
        pytest.param(
            ["--annotations", "metric=concurrency"], "the trace has a rps column", id="metric-mismatch"
        ),
        pytest.param(["--annotations", "window=1s"], "window=1s is out of range", id="bad-annotation"),
        pytest.param(["--config", "/nonexistent/config.yaml"], "cannot read", id="missing-config"),
    ],
)
def test_main_errors(args: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(RPS), *args]) == 2
    assert fragment in capsys.readouterr().err


def test_main_config_file_and_bad_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "config-autoscaler.yaml"
    cfg.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: config-autoscaler}\n"
        "data:\n  enable-scale-to-zero: 'false'\n  stable-window: 6s\n"
    )
    assert main([str(SPIKE), "--config", str(cfg)]) == 0
    last = capsys.readouterr().out.splitlines()[-1].split()
    assert last[3] == "1"  # never zero with scale to zero off
    bad = tmp_path / "bad.csv"
    bad.write_text("t,concurrency\n0,1\n1,oops\n")
    assert main([str(bad)]) == 2
    assert f"{bad}:3: concurrency='oops'" in capsys.readouterr().err


def test_plot_writes_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "sim.png"
    assert main([str(SPIKE), "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
