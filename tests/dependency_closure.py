"""The installed distributions a set of requirements needs, followed through their metadata."""

from __future__ import annotations

import importlib.metadata as metadata
import re

from packaging.requirements import Requirement


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(
    requirements: list[str], extras: tuple[str, ...] = ()
) -> dict[str, metadata.Distribution]:
    """Distributions (by canonical name) that ``requirements`` pull in on this platform, with
    ``extras`` of the top-level package requested; extras of dependencies as each one asks."""
    found: dict[str, metadata.Distribution] = {}
    pending = [(Requirement(r), extras) for r in requirements]
    while pending:
        req, wanted_extras = pending.pop()
        environments = [{"extra": e} for e in wanted_extras] or [{"extra": ""}]
        if req.marker and not any(req.marker.evaluate(env) for env in environments):
            continue
        key = canonical(req.name)
        if key in found:
            continue
        dist = metadata.distribution(req.name)
        found[key] = dist
        pending += [(Requirement(r), tuple(req.extras)) for r in dist.requires or []]
    return found
