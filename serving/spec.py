"""serving.knative.dev/v1 Service: the model, YAML parsing with Knative's defaults, validation whose errors
name the file, the document and the field path, revisions, and the local-mode check.

    services = load_services("service.yaml")          # several Services per file, in order
    check_local(services[0])                          # local mode runs command + args as a process
    history = RevisionHistory()
    revision, created = history.admit(services[0])    # hello-00001, True; the same file again: False

The pieces live in spec_model (dataclasses), spec_parse (YAML), spec_probe (readiness probe and its
SERVING_READINESS_PROBE JSON) and spec_revision (names and history); import them from here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .errors import SpecError
from .spec_model import (
    API_VERSION,
    AUTOSCALING_ANNOTATIONS,
    AUTOSCALING_PREFIX,
    DEFAULT_USER_PORT,
    ROLLOUT_DURATION,
    Container,
    EnvVar,
    RevisionTemplate,
    Service,
    TrafficTarget,
)
from .spec_parse import RESERVED_ENV, RESERVED_PORTS, load_services, parse_services
from .spec_probe import HTTPGetAction, Probe, TCPSocketAction, encode_readiness_probe
from .spec_revision import Revision, RevisionHistory, child_name, revision_name

__all__ = [
    "API_VERSION",
    "AUTOSCALING_ANNOTATIONS",
    "AUTOSCALING_PREFIX",
    "DEFAULT_USER_PORT",
    "RESERVED_ENV",
    "RESERVED_PORTS",
    "ROLLOUT_DURATION",
    "Container",
    "EnvVar",
    "HTTPGetAction",
    "Probe",
    "Revision",
    "RevisionHistory",
    "RevisionTemplate",
    "Service",
    "TCPSocketAction",
    "TrafficTarget",
    "check_local",
    "child_name",
    "encode_readiness_probe",
    "load_services",
    "parse_services",
    "revision_name",
]


def check_local(service: Service) -> None:
    """Refuse what local mode cannot run: it starts ``command`` + ``args`` as a process (images are
    neither pulled nor run), in the Service file's directory (or its ``workingDir`` below it)."""
    c = service.template.container
    path = "spec.template.spec.containers[0]"
    where = f"{service.source}, Service {service.name}"
    if not c.command:
        what = f"has image {c.image!r} but no command" if c.image else "has no command"
        raise SpecError(
            f"{where}: {path}.command: the container {what}. Local mode does not run images: it runs "
            "`command` + `args` as a process on this machine, in the Service file's directory, with "
            "$PORT set. Add e.g. `command: [python3, app.py]` to the container (keep `image` for a "
            "cluster), or run it on Kubernetes with `zeroscale render`."
        )
    cwd = Path(service.base_dir) / c.working_dir if c.working_dir else Path(service.base_dir)
    if c.working_dir and not cwd.is_dir():
        raise SpecError(f"{where}: {path}.workingDir: {str(cwd)!r} is not a directory")
    program = c.command[0]
    found = (cwd / program).is_file() if "/" in program else shutil.which(program) is not None
    if not found:
        place = f"in {cwd}" if "/" in program else "on PATH"
        raise SpecError(f"{where}: {path}.command[0]: {program!r} was not found {place}")
