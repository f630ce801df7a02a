"""This build's version, from the package metadata (a PyInstaller folder carries it too)."""
from __future__ import annotations

__all__ = ["version_text"]


def version_text() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("outpost")
    except PackageNotFoundError:
        return "unknown (not installed as a package)"
