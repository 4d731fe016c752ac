"""OmegaConf resolvers the configs use, registered once on import."""

from __future__ import annotations

from omegaconf import OmegaConf


def _bundled(name: str) -> str:
    from alignlab.data.offline import bundled_path

    return bundled_path(name)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("bundled"):
        OmegaConf.register_new_resolver("bundled", _bundled)


register_resolvers()
