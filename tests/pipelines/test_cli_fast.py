"""The shell a practitioner types into: `--help` without heavy imports, `--version`, "next:" hints
that keep the user's flags, and library warnings kept off the console unless --verbose."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest

from hyvid.cluster.settings import load_settings
from hyvid.pipelines.cli import COMMANDS, build_parser, main
from hyvid.pipelines.cli import _static as static
from hyvid.pipelines.cli._common import next_command

HEAVY = ("torch", "mlflow", "lance", "cv2", "ray", "pandas", "sklearn", "pyarrow", "numpy", "tqdm")

# Every `hyvid <command> --help` in one fresh interpreter: which heavy modules it imported, and which
# defaults `_static` read (and whether any needed an import).
_PROBE = """
import contextlib, io, json, sys
from hyvid.pipelines.cli import COMMANDS, main, _static
helps = {}
for name in ["", *COMMANDS]:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main([name, "--help"] if name else ["--help"])
        except SystemExit:
            pass
    helps[name] = out.getvalue()
print(json.dumps({"heavy": sorted(m for m in %r if m in sys.modules), "read": _static.READ,
                  "imported": sorted(_static.IMPORTED), "helps": helps}))
""" % (HEAVY,)


@pytest.fixture(scope="module")
def probe():
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_no_help_imports_a_heavy_library(probe):
    assert set(probe["helps"]) == {"", *COMMANDS}
    assert probe["heavy"] == [] and probe["imported"] == []
    for name, text in probe["helps"].items():
        assert text.startswith("usage: hyvid"), (name, text[:200])
    assert "(default 25)" in probe["helps"]["extract"]  # ExtractConfig.frames, read from source
    assert "{dis,farneback,tvl1,tvl1-torch}" in probe["helps"]["extract"]  # FLOW_METHODS
    assert "auto|cpu|cuda" in probe["helps"]["extract"]  # FLOW_DEVICES


def test_every_default_read_from_source_equals_the_imported_one(probe):
    """`_static` reads defaults without importing; the imported modules must agree on every one."""
    readers = {"constant": static.constant, "config_defaults": static.config_defaults,
               "signature_defaults": static.signature_defaults}
    assert len(probe["read"]) >= 20
    for target, reader in probe["read"].items():
        from_source = readers[reader](target, use_loaded=False)
        imported = static._imported(target)
        if reader == "constant":
            expected = imported
        elif reader == "config_defaults":
            expected = vars(static.SimpleNamespace(**static.dataclass_defaults(imported)))
            from_source = vars(from_source)
        else:
            import inspect

            expected = {k: p.default for k, p in inspect.signature(imported).parameters.items()
                        if p.default is not p.empty}
        assert from_source == expected, target


def test_a_value_the_source_cannot_say_is_computed_or_imported():
    # A comprehension in a module that imports only the standard library: that module is run alone
    # (its package, hyvid.pipelines.data.synth, imports OpenCV).
    pairs = static.constant("hyvid.pipelines.data.synth:ORDER_PAIRS", use_loaded=False)
    assert pairs[:3] == (("Left", "Up"), ("Up", "Zoom"), ("Left", "Zoom")) and len(pairs) > 3
    assert "hyvid.pipelines.data.synth:ORDER_PAIRS" not in static.IMPORTED
    # A function of a module that imports pyarrow: imported, never guessed.
    fn = static.constant("hyvid.store.tables:frame_features_schema", use_loaded=False)
    from hyvid.store.tables import frame_features_schema

    assert fn is frame_features_schema and "hyvid.store.tables:frame_features_schema" in static.IMPORTED


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"hyvid {version('hyvid')}"


def test_next_hint_repeats_every_context_flag_the_user_gave():
    s = load_settings()
    parser = build_parser(s)
    args = parser.parse_args(["train-cnn", "--store", "st", "--exp", "my exp", "--tracking-uri", "sqlite:///t.db",
                              "--address=10.0.0.1:6379", "--epochs", "1"])
    hint = next_command(args, s, "features", store=args.store, split=1)
    assert hint == ("next: hyvid features --store st --split 1 --experiment 'my exp' --tracking-uri sqlite:///t.db "
                    "--address 10.0.0.1:6379")
    # `report` takes no --store nor --address: the hint leaves them out, and keeps what it takes.
    assert next_command(args, s, "report") == "next: hyvid report --experiment 'my exp' --tracking-uri sqlite:///t.db"
    plain = parser.parse_args(["train-cnn"])
    assert next_command(plain, s, "features", store=plain.store, split=1) == f"next: hyvid features --store " \
                                                                             f"{plain.store} --split 1"


def _warning_probe(args, s):
    import logging

    warnings.warn("lance-like library warning", UserWarning, stacklevel=1)
    logging.getLogger("some.library").warning("a library's own warning")
    logging.getLogger("hyvid.pipelines.probe").info("hyvid progress line")
    print("the command's output")
    return 0


@pytest.mark.parametrize("verbose", [False, True])
def test_library_warnings_go_to_the_log_file_unless_verbose(verbose, tmp_path, monkeypatch, capsys):
    import os

    log = tmp_path / "hyvid.log"
    monkeypatch.setenv("HYVID_LOG", str(log))
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    COMMANDS["__warn"] = COMMANDS["jobs"]._replace(run=_warning_probe, add_arguments=lambda p, s: None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            assert main(["--verbose", "__warn"] if verbose else ["__warn"]) == 0
    finally:
        del COMMANDS["__warn"]
    out, err = capsys.readouterr()
    assert out.strip() == "the command's output"
    assert "hyvid progress line" in err
    assert ("lance-like library warning" in err) is verbose and ("a library's own warning" in err) is verbose
    if not verbose:
        text = log.read_text()
        assert "lance-like library warning" in text and "a library's own warning" in text
    # The command's environment for Ray workers is undone when it returns.
    assert "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ
