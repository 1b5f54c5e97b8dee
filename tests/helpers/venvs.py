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


# Run in the bare venv by `predict_examples`: each model folder loaded with mlflow.pyfunc alone,
# predicting on its own input example, then on a wrong-shape input (a tensor model's inputs with an
# extra leading axis). Prints one JSON line.
_PREDICT_EXAMPLES = r'''
import importlib.util, json, sys
assert importlib.util.find_spec("hyvid") is None, "hyvid must not be importable here"
import mlflow, numpy as np, pandas as pd
from mlflow.models import Model

out = {}
for name, folder in json.loads(sys.argv[1]).items():
    model = mlflow.pyfunc.load_model(folder)
    example = Model.load(folder).load_input_example(folder)
    pred = model.predict(example)
    rec = {"example": type(example).__name__}
    if isinstance(pred, pd.DataFrame):
        rec["columns"] = list(pred.columns)
        rec["rows"] = json.loads(pred.to_json(orient="records"))
    else:
        pred = np.asarray(pred)
        rec.update(shape=list(pred.shape), finite=bool(np.isfinite(pred).all()))
        wrong = ({k: v[None] for k, v in example.items()} if isinstance(example, dict) else example[None])
        try:
            model.predict(wrong)
            rec["wrong_shape"] = None
        except Exception as e:  # the refusal's last line names the expected shape
            rec["wrong_shape"] = str(e).strip().splitlines()[-1]
    out[name] = rec
out["modules"] = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps(out))
'''


def predict_examples(venv_python: Path, folders: dict[str, str], timeout: float = 600) -> dict:
    """Load each MLflow model folder in the bare venv, predict on its input example and on a
    wrong-shape input; the results by name, plus `modules`: every top-level module imported."""
    import json

    proc = subprocess.run([str(venv_python), "-c", _PREDICT_EXAMPLES, json.dumps(folders)], capture_output=True,
                          text=True, env=bare_env(venv_python), timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"the bare venv failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
