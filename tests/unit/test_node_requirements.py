"""deploy/node-requirements.txt, the environment of Spark executors and Ray nodes, is the project's
stack: every runtime dependency of pyproject.toml, pinned exactly to a version its range allows and
to the one the Docker images pin, and nothing of the project itself."""
from __future__ import annotations

import re

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.unit.test_docker_pins import DOCKERFILES, ROOT, dockerfile_text, pyproject_requirements

NODE_REQUIREMENTS = ROOT / "deploy" / "node-requirements.txt"


def node_requirements() -> dict[str, Requirement]:
    lines = [ln.split("#", 1)[0].strip() for ln in NODE_REQUIREMENTS.read_text().splitlines()]
    reqs = [Requirement(ln) for ln in lines if ln]
    return {canonicalize_name(r.name): r for r in reqs}


def pinned(req: Requirement) -> str:
    (spec,) = req.specifier
    assert spec.operator == "==", f"{req}: pin it exactly (==)"
    return spec.version


def test_every_runtime_dependency_is_pinned_within_its_range():
    project, nodes = pyproject_requirements(), node_requirements()
    assert set(nodes) == set(project), (set(project) ^ set(nodes))
    for name, req in nodes.items():
        assert project[name].specifier.contains(pinned(req)), f"{req} is outside pyproject's {project[name]}"
        assert req.extras == project[name].extras, f"{name}: extras {req.extras} vs {project[name].extras}"
    assert "imbalance-pipeline" not in nodes


def test_the_pins_are_the_images_pins():
    nodes = node_requirements()
    text = dockerfile_text(DOCKERFILES["cpu"])
    for m in re.finditer(r'"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^"]+)"', text):
        name, version = canonicalize_name(m.group(1)), m.group(3)
        if version.startswith("$"):   # torch: the image takes it from constraints.txt (checked below)
            continue
        assert pinned(nodes[name]) == version, f"{name}: node-requirements {pinned(nodes[name])}, image {version}"
    torch = re.search(r"^torch==(\S+)", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    assert pinned(nodes["torch"]) == torch
