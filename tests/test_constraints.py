"""constraints.txt, the versions `.ci/run` installs, agrees with pyproject.toml."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def pins() -> dict[str, Version]:
    found = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep, f"not an exact pin: {line!r}"
        found[canonicalize_name(name)] = Version(version)
    return found


def test_every_dependency_is_pinned_within_its_range() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = pins()
    assert canonicalize_name(project["name"]) not in pinned  # the project itself is not pinned
    for spec in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is not in constraints.txt"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"{req.name}=={pinned[name]} is outside {req.specifier}")


def test_lower_bounds_are_past_known_advisories() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    floors = {canonicalize_name(Requirement(s).name): Requirement(s).specifier
              for s in [*project["dependencies"], *project["optional-dependencies"]["test"]]}
    # A version with the advisory is refused by the range itself, not only by the pin.
    for name, vulnerable in [("aiohttp", "3.12.13"), ("aiohttp", "3.14.3"), ("jinja2", "3.1.5"),
                             ("orjson", "3.9.14"), ("aiosmtpd", "1.4.5")]:
        assert not floors[name].contains(vulnerable), f"{name} {vulnerable} is still allowed"
