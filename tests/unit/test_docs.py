"""The user-facing docs speak to users: no issue numbers, no development log, no paths outside the repo."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
USER_FACING = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "conf").glob("*.yaml"))]
FORBIDDEN = {
    "an issue number": re.compile(r"\bissues? ?#?\d", re.I),
    "a path to the survey outside the repository": re.compile(r"shared/survey|\.\./shared/", re.I),
    "development-log language": re.compile(r"\bthis (session|task|helper)\b|\bnot lent\b", re.I),
}


@pytest.mark.parametrize("path", USER_FACING, ids=lambda p: str(p.relative_to(ROOT)))
def test_user_docs_have_no_development_log_language(path):
    text = path.read_text(encoding="utf-8")
    found = [f"{path.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}: {what}: {m.group(0)!r}"
             for what, rx in FORBIDDEN.items() for m in rx.finditer(text)]
    assert not found, "\n".join(found)


def test_the_survey_is_cited_by_its_doi():
    for name in ("README.md", "docs/methods.md", "docs/survey-methods.md", "docs/metrics.md"):
        assert "https://doi.org/10.1186/s40537-019-0192-5" in (ROOT / name).read_text(), name


def test_readme_keeps_its_first_commands_and_covers_presets_and_own_data():
    readme = (ROOT / "README.md").read_text()
    first = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert "bash scripts/install.sh && .venv/bin/imbalance run conf/demo.yaml" in first
    assert "bash scripts/install.sh && .venv/bin/python -m pytest -q tests" in first
    missing = [p.name for p in sorted((ROOT / "conf").glob("*.yaml")) if f"`{p.name}`" not in readme]
    assert not missing, f"presets the README does not describe: {missing}"
    own_data = readme.split("## Bring your own data", 1)[1].split("\n## ", 1)[0]
    for key in ("`id`", "`label`", "`features`", "`image`", "data.input", "data.label_col", "data.image_shape",
                "data.train_path", "data.val_path", "data.test_path", "data.images", "encoded", "raw"):
        assert key in own_data, key
    assert ".venv/bin/spark-submit" in readme


def test_docs_link_only_to_files_that_exist():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+\.(?:md|png|yaml))\)", path.read_text()):
            assert (path.parent / target).exists(), f"{path.relative_to(ROOT)} links to missing {target}"
        for conf in re.findall(r"`(conf/[\w.-]+\.yaml)`", path.read_text()):
            assert (ROOT / conf).exists(), f"{path.relative_to(ROOT)} names missing {conf}"


def test_docs_cite_sections_only_of_files_in_the_repository():
    """A citation such as `SOME.md "A section"` in the docs, the Docker files or the configs names a file
    that ships with the repository."""
    paths = [*USER_FACING, *sorted((ROOT / "docker").iterdir())]
    shipped = {p.name for p in ROOT.rglob("*.md") if ".venv" not in p.parts}
    for path in paths:
        for name in re.findall(r"([\w.-]+\.md) \"", path.read_text(encoding="utf-8")):
            assert name in shipped, f"{path.relative_to(ROOT)} cites {name}, which is not in the repository"


def test_readme_first_command_states_the_demo_imbalance():
    import yaml

    first = (ROOT / "README.md").read_text().split("```bash", 1)[1].split("```", 1)[0]
    rho = yaml.safe_load((ROOT / "conf" / "demo.yaml").read_text())["data"]["protocol_rho"]
    assert re.findall(r"rho = (\d+)", first) == [str(rho)]
