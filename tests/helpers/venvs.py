"""A virtual environment without hyvid: `bare_venv(dest, ["mlflow", "torch", "numpy"])`.

It holds the named distributions and everything they depend on, exactly the versions installed
here (requirements.lock's), linked from this interpreter's site-packages rather than copied or
downloaded: the same files in seconds instead of minutes of pip (torch alone unpacks ~1 GB), and
no network. Nothing else is linked: no hyvid (its editable-install hook is a .pth file, and no
.pth file is linked), no Ray, no Lance. Console scripts of those distributions (`mlflow`,
`uvicorn`) are written into its bin/, so `mlflow models serve` runs from it as from a pip install.
"""
from __future__ import annotations

import importlib.metadata as md
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterable


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(names: Iterable[str]) -> list[md.Distribution]:
    """The installed distributions `names` and their dependencies (no extras), each once."""
    from packaging.requirements import Requirement

    seen: dict[str, md.Distribution] = {}
    todo = [_norm(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # an optional dependency that is not installed here
        seen[name] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(_norm(req.name))
    return list(seen.values())


def _top_level(dist: md.Distribution) -> set[str]:
    """The entries a distribution put directly in site-packages (packages, modules, .libs, dist-info)."""
    out = set()
    for f in dist.files or []:
        first = f.parts[0]
        if first != ".." and first != "__pycache__" and not first.endswith(".pth"):
            out.add(first)
    return out


def bare_venv(dest: Path, names: Iterable[str]) -> Path:
    """A venv at `dest` with `names` and their dependencies only (see the module doc); its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True, capture_output=True)
    py = dest / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    for dist in closure(names):
        base = Path(str(dist.locate_file("")))
        for entry in _top_level(dist):
            src, dst = base / entry, site / entry
            if src.exists() and not dst.exists():
                dst.symlink_to(src)
        for ep in dist.entry_points:
            if ep.group == "console_scripts":
                module, _, attr = ep.value.partition(":")
                script = dest / "bin" / ep.name
                script.write_text(f"#!{py}\nimport sys\nfrom {module} import {attr.split('.')[0]} as _main\n"
                                  f"sys.exit(_main{attr[len(attr.split('.')[0]):]}())\n")
                script.chmod(0o755)
    return py


def bare_env(venv_python: Path, **extra: str) -> dict[str, str]:
    """The environment a subprocess in the bare venv runs with: its bin first on PATH, no PYTHONPATH,
    no MLFLOW_TRACKING_URI (a standalone model needs no tracking server)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv_python.parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env
