"""docker/Dockerfile (no container engine here, so its structure is checked): one target per image that
`render` names, exec-form entrypoints of declared console scripts, a numeric non-root user, a slim base."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from cluster.render import build
from serving.spec import parse_services

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "docker" / "Dockerfile").read_text()


def stages() -> dict[str, list[str]]:
    """Instructions of each named stage (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    out: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)$", line, re.IGNORECASE)
        if m:
            current = m.group(2)
            out[current] = [line]
        elif current:
            out[current].append(line)
    return out


def rendered_images() -> set[str]:
    text = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: a}\nspec:\n  template:\n"
    text += "    spec:\n      containers: [{image: example.com/a}]\n"
    docs = build(parse_services(text), {}, image_prefix="P/", tag="T")
    return {
        c["image"]
        for d in docs
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
        if c["image"].startswith("P/")
    }


def test_one_target_per_rendered_image() -> None:
    targets = {img.removeprefix("P/").removesuffix(":T") for img in rendered_images()}
    assert targets == {"queue-proxy", "activator", "autoscaler"}
    assert targets <= set(stages())


def test_entrypoints_are_exec_form_console_scripts() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    all_stages = stages()
    for target in ("queue-proxy", "activator", "autoscaler"):
        (entry,) = [i for i in all_stages[target] if i.upper().startswith("ENTRYPOINT")]
        argv = json.loads(entry.split(None, 1)[1])  # exec form is a JSON array; shell form would not parse
        assert argv == [target] and target in scripts
        assert not any(
            i.upper().startswith("CMD") and not i.split(None, 1)[1].startswith("[")
            for i in all_stages[target]
        )
        assert all_stages[target][0].split()[1] == "base"


def test_base_is_slim_and_runs_as_a_numeric_non_root_user() -> None:
    base = stages()["base"]
    assert re.search(r"ARG PYTHON_IMAGE=python:3\.11-slim", DOCKERFILE)
    (user,) = [i for i in base if i.upper().startswith("USER")]
    uid = user.split()[1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    # the pods the render writes run as the same UID
    from cluster.k8s_manifests import NON_ROOT_UID

    assert int(uid) == NON_ROOT_UID
    # the wheels are mounted for the install, not copied into a layer
    assert any("--mount=type=bind,from=build" in i for i in base)


def test_the_build_context_holds_every_package_the_wheel_includes() -> None:
    includes = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {p.rstrip("*") for p in includes["include"]}
    copied = {m.group(1) for m in re.finditer(r"^COPY (\w+)/ \1/$", DOCKERFILE, re.MULTILINE)}
    assert packages == copied
    ignore = (ROOT / "docker" / "Dockerfile.dockerignore").read_text()
    assert packages <= {line.strip("!/") for line in ignore.splitlines() if line.startswith("!")}
