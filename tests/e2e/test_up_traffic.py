"""`zeroscale up` traffic end to end, under steady load: a gradual rollout, a 40/60 split that serves
both revisions, a bad file or ConfigMap refused with nothing changed, a good ConfigMap taken, and
delete; not one failed request throughout."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from cluster.up_load import LoadClient, get_once
from tests.e2e.test_up import ROOT, up_process

HELLO_APP = ROOT / "examples" / "hello" / "app.py"
HOST = "web.default.example.com"


def service(version: str, traffic: str = "", bad: str = "") -> str:
    return f"""apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: web
  annotations:
    serving.knative.dev/rollout-duration: "4s"
spec:
  template:
    spec:
      containers:
        - command: [python3, {HELLO_APP}]
          env:
            - name: TARGET
              value: "v{version}"{bad}
{traffic}"""


SPLIT = """  traffic:
    - revisionName: web-00002
      percent: 40
    - latestRevision: true
      percent: 60
"""


CONFIGMAP = """apiVersion: v1
kind: ConfigMap
metadata:
  name: config-autoscaler
data:
  stable-window: "{window}"
"""


def traffic_of(status: dict[str, Any]) -> dict[str, int]:
    return traffic_of_service(status, "web")


def traffic_of_service(status: dict[str, Any], name: str) -> dict[str, int]:
    svc = next(s for s in status["services"] if s["name"] == name)
    out: dict[str, int] = {}
    for t in svc["traffic"]:
        if t["percent"]:
            out[t["revision"]] = out.get(t["revision"], 0) + t["percent"]
    return out


def web(status: dict[str, Any]) -> dict[str, Any]:
    return web_of(status, "web")


def web_of(status: dict[str, Any], name: str) -> dict[str, Any]:
    svc: dict[str, Any] = next(s for s in status["services"] if s["name"] == name)
    return svc


async def test_rollout_split_refusal_and_delete_under_steady_load(tmp_path: Path) -> None:
    files = {}
    for name, text in {
        "v1": service("1"),
        "v2": service("2"),
        "v3": service("3", SPLIT),
        "bad": service("4", SPLIT, bad="\n          bogus: true"),
    }.items():
        files[name] = tmp_path / f"{name}.yaml"
        files[name].write_text(text)

    with up_process("-f", files["v1"]) as up:
        await up.wait_up()

        async def v1_ready() -> bool:
            return bool((await up.arevision("web"))["ready_pods"] >= 1)

        await up.poll(v1_ready, timeout=30, what="web-00001 has a ready pod")
        load = LoadClient(up.port, HOST, "/", workers=4, max_seconds=120)
        load.start()
        try:
            # 1. a new template: web-00002 comes up, then takes the traffic in steps over 4 s.
            r = await asyncio.to_thread(up.cli, "apply", "-f", files["v2"])
            assert r.returncode == 0 and "web-00002 created" in r.stdout, r.stderr
            shares: list[int] = []

            async def rolled_out() -> bool:
                t = traffic_of(await up.astatus())
                if t.get("web-00002") not in (None, *shares[-1:]):
                    shares.append(t["web-00002"])
                return t == {"web-00002": 100}

            await up.poll(rolled_out, timeout=40, what="web-00002 has all the traffic")
            assert len(shares) >= 3 and shares[0] < 50 < shares[-1] == 100, shares  # it went in steps

            # 2. a third revision with a 40/60 split between web-00002 and the latest: both answer.
            r = await asyncio.to_thread(up.cli, "apply", "-f", files["v3"])
            assert r.returncode == 0, r.stderr

            async def split() -> bool:
                return traffic_of(await up.astatus()) == {"web-00002": 40, "web-00003": 60}

            await up.poll(split, timeout=40, what="a 40/60 split")
            before = dict(load.bodies)

            async def enough() -> bool:
                return sum(load.bodies.values()) - sum(before.values()) >= 200

            await up.poll(enough, timeout=60, what="200 answers under the split")
            new = {k: v - before.get(k, 0) for k, v in load.bodies.items()}
            v2 = sum(n for b, n in new.items() if b.endswith(b"(revision web-00002)"))
            v3 = sum(n for b, n in new.items() if b.endswith(b"(revision web-00003)"))
            assert v2 + v3 == sum(new.values()), new
            assert 0.45 <= v3 / (v2 + v3) <= 0.75, new

            # 3. a bad file is refused naming the field; what runs keeps running unchanged.
            status_before = await up.astatus()
            r = await asyncio.to_thread(up.cli, "apply", "-f", files["bad"])
            assert r.returncode != 0 and "containers[0].bogus" in r.stderr, (r.stdout, r.stderr)
            after = await up.astatus()
            assert traffic_of(after) == traffic_of(status_before)
            names = [[rev["name"] for rev in web(s)["revisions"]] for s in (status_before, after)]
            assert names[0] == names[1] == ["web-00003", "web-00002", "web-00001"]
            # 4. ConfigMaps go through apply too: a bad key is refused naming it, a good one is taken.
            bad_cm = tmp_path / "bad-config.yaml"
            bad_cm.write_text(CONFIGMAP.format(window="2s"))
            r = await asyncio.to_thread(up.cli, "apply", "-f", bad_cm)
            assert r.returncode != 0 and "stable-window" in r.stderr, (r.stdout, r.stderr)
            good_cm = tmp_path / "config.yaml"
            good_cm.write_text(CONFIGMAP.format(window="30s"))
            r = await asyncio.to_thread(up.cli, "apply", "-f", good_cm)
            assert r.returncode == 0 and "configmap config-autoscaler applied" in r.stdout, r.stderr
            assert traffic_of(await up.astatus()) == traffic_of(status_before)
        finally:
            await load.stop()
        assert load.failed == 0 and load.sent >= 200, load.statuses
        print(f"under rollout, split and refusal: {load.summary()}")

        # 5. delete: the host is gone, the pods drain away.
        r = await asyncio.to_thread(up.cli, "delete", "web")
        assert r.returncode == 0, r.stderr
        assert (await up.astatus())["services"] == []
        status, _ = await get_once(up.port, HOST, "/")
        assert status == 404
        assert up.stop(signal.SIGTERM) == 0


async def test_blue_green_example_serves_its_tags_and_split_on_a_custom_domain() -> None:
    bg = ROOT / "examples" / "blue-green"
    with up_process("-f", bg / "service-blue.yaml", "--domain", "test.local") as up:
        await up.wait_up()
        status, body = await get_once(up.port, "blue-green.default.test.local", "/", timeout=60)
        assert status == 200 and body.startswith(b"blue (revision blue-green-blue)"), body
        r = await asyncio.to_thread(up.cli, "apply", "-f", bg / "service-green.yaml")
        assert r.returncode == 0, r.stderr

        async def split() -> bool:
            return traffic_of_service(await up.astatus(), "blue-green") == {
                "blue-green-blue": 60,
                "blue-green-green": 40,
            }

        await up.poll(split, timeout=40, what="a 60/40 blue/green split")
        for host, color in [
            ("blue-blue-green.default.test.local", b"blue"),
            ("green-blue-green.default.test.local", b"green"),
            ("latest-blue-green.default.test.local", b"green"),  # tag on latestRevision, 0 %
        ]:
            status, body = await get_once(up.port, host, "/", timeout=60)
            assert status == 200 and body.startswith(color), (host, body)
        seen = [(await get_once(up.port, "blue-green.default.test.local", "/"))[1][:4] for _ in range(20)]
        assert set(seen) == {b"blue", b"gree"}
        svc = next(s for s in (await up.astatus())["services"] if s["name"] == "blue-green")
        assert svc["url"] == "http://blue-green.default.test.local"
        tags = {t["tag"]: t["url"] for t in svc["traffic"] if t["tag"]}
        assert tags["green"] == "http://green-blue-green.default.test.local"
        status, _ = await get_once(up.port, "nope.default.test.local", "/")
        assert status == 404


def named(rev: str, version: str) -> str:
    return f"""apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: flip
spec:
  template:
    metadata:
      name: {rev}
    spec:
      containers:
        - command: [python3, {HELLO_APP}]
          env:
            - name: TARGET
              value: "v{version}"
  traffic:
    - revisionName: {rev}
      percent: 100
"""


async def test_traffic_flips_ten_times_between_two_revisions_without_a_failed_request(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(named("flip-a", "1"))
    b.write_text(named("flip-b", "2"))
    with up_process("-f", a) as up:
        await up.wait_up()
        load = LoadClient(up.port, "flip.default.example.com", "/", workers=4, max_seconds=120)
        load.start()
        try:
            for i in range(10):
                target = "flip-b" if i % 2 == 0 else "flip-a"
                r = await asyncio.to_thread(up.cli, "apply", "-f", b if target == "flip-b" else a)
                assert r.returncode == 0, r.stderr
                marker = f"(revision {target})".encode()
                seen = sum(n for body, n in load.bodies.items() if body.endswith(marker))

                async def moved(marker: bytes = marker, seen: int = seen) -> bool:
                    now = sum(n for body, n in load.bodies.items() if body.endswith(marker))
                    return now >= seen + 20  # answers keep coming from the revision now routed

                await up.poll(moved, timeout=40, what=f"flip {i + 1}: {target} answers")
        finally:
            await load.stop()
        assert load.failed == 0 and load.sent > 200, load.statuses
        names = [rev["name"] for rev in web_of(await up.astatus(), "flip")["revisions"]]
        assert sorted(names) == ["flip-a", "flip-b"]  # flipping made no new revision
        print(f"ten flips: {load.summary()}")


async def test_a_revision_that_never_gets_ready_leaves_traffic_where_it_was(tmp_path: Path) -> None:
    good, broken = tmp_path / "good.yaml", tmp_path / "broken.yaml"
    good.write_text(service("1"))
    broken.write_text(
        service("2").replace(
            f"command: [python3, {HELLO_APP}]",
            "command: [python3, -c, \"import sys; print('no database configured'); sys.exit(3)\"]",
        )
    )
    with up_process("-f", good) as up:
        await up.wait_up()

        async def serving() -> bool:
            return bool((await up.arevision("web", "web-00001"))["ready"])

        await up.poll(serving, timeout=30, what="web-00001 serves")
        r = await asyncio.to_thread(up.cli, "apply", "-f", broken)
        assert r.returncode == 0 and "web-00002 created" in r.stdout, r.stderr

        async def reported() -> bool:
            return bool((await up.arevision("web", "web-00002"))["last_failure"])

        await up.poll(reported, timeout=40, what="the broken revision's failure is reported")
        assert "no database configured" in up.log  # its last output lines are in the log
        status = await up.astatus()
        assert traffic_of(status) == {"web-00001": 100}
        assert not next(r for r in web(status)["revisions"] if r["name"] == "web-00002")["ready"]
        for _ in range(5):
            code, body = await get_once(up.port, HOST, "/", timeout=60)
            assert code == 200 and body.endswith(b"(revision web-00001)\n"), body
