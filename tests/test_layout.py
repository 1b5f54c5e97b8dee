"""The installed layout: every package folder is listed in pyproject.toml and imports as hyvid.*."""
from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cluster", "pipelines", "models", "store")


def test_every_package_folder_is_installed_under_hyvid():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {"hyvid." + ".".join(p.parent.relative_to(ROOT).parts)
               for top in PACKAGES for p in (ROOT / top).rglob("__init__.py")}
    assert on_disk == listed, (sorted(on_disk - listed), sorted(listed - on_disk))
    for name in sorted(listed):
        assert importlib.import_module(name).__file__.startswith(str(ROOT)), name
