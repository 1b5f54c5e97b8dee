"""The `hyvid` CLI parses flags into the stages' configs: defaults from the configs, nothing else.

No test here runs a stage: each builds parsers and configs only, and the stage functions are
replaced by ones that fail the test if a bad value ever got that far.
"""
from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from hyvid.cluster.settings import Settings
from hyvid.pipelines.cli import COMMANDS, build_parser, main
from hyvid.pipelines.cli._common import shown

CLI_DIR = Path(__file__).resolve().parents[2] / "pipelines" / "cli"
HEAVY = ("torch", "mlflow", "ray", "lance", "cv2")
# Settings unlike every built-in default, so a value that came from them is recognisable.
S = Settings(store_uri="s3://bucket/st", tracking_uri="sqlite:////tmp/hyvid-cli-test.db", ray_address="ray://head:10001",
             experiment="exp-from-settings", workers={"extract": 3, "train-cnn": 2, "features": 5, "train": 4},
             dashboard_address="http://head:8265")


def _imports_after(code: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `code` in a fresh interpreter; returns the process and which HEAVY modules it imported."""
    probe = (f"import sys\ntry:\n    {code}\nexcept SystemExit:\n    pass\n"
             f"print('IMPORTED', *[m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    line = next(x for x in proc.stderr.splitlines() if x.startswith("IMPORTED"))
    return proc, set(line.split()[1:])


def test_top_level_help_lists_every_command_without_importing_a_stage():
    proc, heavy = _imports_after("from hyvid.pipelines.cli import main; main(['--help'])")
    assert heavy == set(), f"`hyvid --help` imported {heavy}"
    listed = proc.stdout.split("options:")[0]
    for name, cmd in COMMANDS.items():
        assert name in listed and cmd.help.split()[0] in listed


def test_build_parser_imports_no_stage():
    _, heavy = _imports_after("from hyvid.pipelines.cli import build_parser; build_parser()")
    assert heavy == set()


@pytest.mark.parametrize("command", ["jobs", "logs", "stop", "query"])
def test_light_command_help_imports_no_stage(command):
    proc, heavy = _imports_after(f"from hyvid.pipelines.cli import main; main([{command!r}, '--help'])")
    assert heavy == set(), f"`hyvid {command} --help` imported {heavy}"
    assert f"usage: hyvid {command}" in proc.stdout


def test_python_m_help_exits_0():
    proc = subprocess.run([sys.executable, "-m", "hyvid.pipelines.cli", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "train-cnn" in proc.stdout and "submit" in proc.stdout


# command -> (argv after the name, the config's required fields, fields whose value comes from S).
# Every other field of the config built from these argv must be the config class's own default.
def _cases(tmp: Path) -> dict[str, tuple[list[str], dict, dict]]:
    track = {"tracking_uri": S.tracking_uri}
    ray = {"address": S.ray_address}
    return {
        "synth": (["out"], {"out": "out"}, {}),
        "extract": (["data"], {"dataset": "data", "store_uri": S.store_uri}, {**ray, "workers": 3}),
        "train-cnn": ([], {"store_uri": S.store_uri}, {"experiment": S.experiment, **track, **ray, "workers": 2}),
        "features": ([], {"store_uri": S.store_uri}, {"experiment": S.experiment, **track, **ray, "workers": 5}),
        # Like the hybrid's, the CLI keeps train's curves in its own folder too (the config's None: artifacts only).
        "train": ([], {"store_uri": S.store_uri},
                  {"experiment": S.experiment, **track, **ray, "workers_per_model": 4, "plots_dir": "hyvid_plots"}),
        # The CLI writes the hybrid's files to its own folder (hybrid.DEFAULT_OUT_DIR), one per split.
        "hybrid": ([], {"store_uri": S.store_uri},
                   {"experiment": S.experiment, **track, "out_dir": "hyvid_plots/split1"}),
        "report": ([], {"experiment": S.experiment}, track),
        "runs": ([], {"experiment": S.experiment}, track),
        "predict": (["a.avi"], {"videos": ("a.avi",)}, {"experiment": S.experiment, **track}),
        "evaluate": ([str(tmp)], {"dataset": str(tmp)}, {"experiment": S.experiment, **track, **ray}),
        "run": ([str(tmp)], {"dataset": str(tmp), "store_uri": S.store_uri},
                {"experiment": S.experiment, **track, **ray}),
        "demo": ([], {}, {}),
        "submit": (["--no-working-dir", "--", "extract", "d"],
                   {"address": S.dashboard_address, "args": ("extract", "d")}, {}),
    }


def test_every_config_command_is_covered(tmp_path):
    assert {n for n, c in COMMANDS.items() if c.config} == set(_cases(tmp_path))


@pytest.mark.parametrize("command", sorted(_cases(Path("."))))
def test_no_flags_give_the_config_defaults_or_the_settings(command, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    argv, required, from_settings = _cases(tmp_path)[command]
    args = build_parser(S).parse_args([command, *argv])
    built = COMMANDS[command].config(args, S)
    for cfg in built if isinstance(built, list) else [built]:
        default = type(cfg)(**required)
        for f in dataclasses.fields(cfg):
            want = from_settings.get(f.name, getattr(default, f.name))
            assert getattr(cfg, f.name) == want, f"hyvid {command}: {f.name}"


# Flags whose dest differs from the config field they set (or that set a field of another config).
_FIELD_OF = {"train": {"pooling": "lstm_pooling", "lam_grid": "lam2_grid"}}
# Shown another way than `shown` writes it: synth's size as WxH.
_SKIP = {("synth", "size")}


@pytest.mark.parametrize("command", sorted(_cases(Path("."))))
def test_help_states_each_config_default(command, tmp_path):
    argv, required, from_settings = _cases(tmp_path)[command]
    parser = build_parser(S)
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    cfg_cls = type(next(iter(_as_list(COMMANDS[command].config(parser.parse_args([command, *argv]), S)))))
    defaults = {f.name: f.default for f in dataclasses.fields(cfg_cls)}
    checked = 0
    for action in sub._actions:
        field = _FIELD_OF.get(command, {}).get(action.dest, action.dest)
        value = defaults.get(field, dataclasses.MISSING)
        if field == "tracking_uri":  # resolved when the config is built (flag > env > settings), not a flag default
            continue
        if field in from_settings and action.option_strings:
            assert action.default == from_settings[field], f"hyvid {command} {action.option_strings[0]}"
            continue
        if (not action.option_strings or value in (None, dataclasses.MISSING) or isinstance(value, bool)
                or (command, field) in _SKIP or field in required):
            continue
        assert shown(value) in action.help, f"hyvid {command} {action.option_strings[0]}: {action.help!r}"
        checked += 1
    assert checked, f"hyvid {command}: no flag with a config default found"


def _as_list(x):
    return x if isinstance(x, list) else [x]


def test_train_help_names_both_fusion_grids():
    from hyvid.pipelines.train import TrainConfig

    sub = next(a for a in build_parser(S)._actions if a.dest == "command").choices["train"]
    sub.format_help()
    text = next(a.help for a in sub._actions if a.dest == "lam_grid")
    d = TrainConfig(store_uri="x")
    assert shown(d.lam2_grid) in text and shown(d.lam3_grid) in text
    assert "0,3e-5,3e-4" not in text  # the grid the help once named, which train never used


@pytest.mark.parametrize("command, argv, stage, message", [
    ("demo", ["--videos-per-class", "0"], "hyvid.pipelines.run:demo", "got 0"),
    ("demo", ["--classes", "0"], "hyvid.pipelines.run:demo", "0"),
    ("run", ["{tmp}", "--lstm-epochs", "0"], "hyvid.pipelines.run:run", "got 0"),
    ("run", ["{tmp}", "--size", "0"], "hyvid.pipelines.run:run", "got 0"),
    ("train", ["--lstm-epochs", "0"], "hyvid.pipelines.train:train", "got 0"),
    ("train-cnn", ["--epochs", "0"], "hyvid.pipelines.train_cnn:train_cnn", "got 0"),
    ("synth", ["{tmp}/s", "--videos-per-class", "0"], "hyvid.pipelines.data.synth:synth", "got 0"),
    ("predict", ["a.avi", "--top", "0"], "hyvid.pipelines.predict:predict", "got 0"),
    ("runs", ["--limit", "0"], "hyvid.pipelines.runs:list_runs", "got 0"),
])
def test_zero_reaches_the_config_and_is_rejected_on_one_line(command, argv, stage, message, tmp_path, monkeypatch,
                                                             capsys):
    import importlib

    module, name = stage.split(":")

    def must_not_run(*a, **k):
        raise AssertionError(f"{stage} ran with a value its config should have rejected")

    monkeypatch.setattr(importlib.import_module(module), name, must_not_run)
    monkeypatch.chdir(tmp_path)
    assert main([command, *(a.format(tmp=tmp_path) for a in argv)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"hyvid {command}: error: ") and "\n" not in err and message in err, err


def test_configs_are_built_with_keywords_only():
    for path in sorted(CLI_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if name.endswith("Config"):
                    assert not node.args, f"{path.name}:{node.lineno}: {name}(...) with positional arguments"


def test_cli_modules_stay_small():
    for path in CLI_DIR.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 300, path.name


def test_flags_parse_only_for_the_command_that_runs():
    parser = build_parser(S)
    sub = next(a for a in parser._actions if a.dest == "command").choices
    parser.parse_args(["jobs"])
    assert [a.dest for a in sub["jobs"]._actions] == ["help", "address"]
    assert [a.dest for a in sub["train"]._actions] == ["help"]  # never parsed: its flags (and torch) not loaded
    assert parser.parse_args(["train", "--epochs", "3"]).epochs == 3


@pytest.mark.parametrize("argv, message", [
    (["train", "--fusion-lr", "nan"], "argument --fusion-lr: nan is not a finite number"),
    (["train", "--lstm-lr", "inf"], "argument --lstm-lr: inf is not a finite number"),
    (["train", "--cpus-per-worker", "NaN"], "argument --cpus-per-worker: NaN is not a finite number"),
    (["hybrid", "--step=-inf"], "argument --step: -inf is not a finite number"),
    (["extract", "d", "--frames", "99999999999999999999"], "argument --frames: 99999999999999999999 is too large"),
    (["similar", "--video", "v", "--frame", "99999999999999999999"], "argument --frame: 99999999999999999999 is too"),
    (["train-cnn", "--cpus-per-worker", "1e5"], "argument --cpus-per-worker: '1e5' is not an integer"),
])
def test_non_finite_and_overflowing_numbers_are_refused_at_parse_time(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser(S).parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("command, argv, stage, message", [
    ("train", ["--lam-grid", "0,nan"], "hyvid.pipelines.train:train", "--lam-grid '0,nan': expected comma-separated"),
    ("train", ["--models", ","], "hyvid.pipelines.train:train", "--models ',': expected comma-separated names, got"),
    ("run", ["{tmp}", "--models", " , "], "hyvid.pipelines.run:run", "--models ' , ': expected comma-separated names"),
    ("hybrid", ["--models", ","], "hyvid.pipelines.hybrid:hybrid", "--models ',': expected"),
])
def test_bad_lists_and_stores_are_one_line_errors(command, argv, stage, message, tmp_path, monkeypatch, capsys):
    import importlib

    module, name = stage.split(":")

    def must_not_run(*a, **k):
        raise AssertionError(f"{stage} ran with a value the CLI should have rejected")

    monkeypatch.setattr(importlib.import_module(module), name, must_not_run)
    monkeypatch.chdir(tmp_path)
    assert main([command, *(a.format(tmp=tmp_path) for a in argv)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"hyvid {command}: ") and "\n" not in err and message in err, err


@pytest.mark.parametrize("command", ["query", "similar", "train", "extract"])
def test_store_that_is_a_regular_file_is_refused_at_parse_time(command, tmp_path, capsys):
    (tmp_path / "file").write_text("a regular file, not a store")
    argv = [command, "--store", str(tmp_path / "file")] + {"query": ["--video", "v"], "extract": ["data"],
                                                           "similar": ["--video", "v", "--frame", "0"]}.get(command, [])
    with pytest.raises(SystemExit) as e:
        build_parser(S).parse_args(argv)
    assert e.value.code == 2 and "argument --store: " in capsys.readouterr().err
    assert build_parser(S).parse_args([*argv[:2], str(tmp_path / "new"), *argv[3:]]).store == str(tmp_path / "new")


def test_query_out_directory_is_a_one_line_error(tmp_path, capsys):
    from helpers.toy_store import build_toy_store

    store = str(tmp_path / "store")
    build_toy_store(store, videos_per_group=1)
    from hyvid.store.feature_store import FeatureStore

    vid = FeatureStore(store).videos()["video_id"][0].as_py()
    (tmp_path / "out").mkdir()
    assert main(["query", "--store", store, "--video", vid, "--format", "json", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hyvid query: error: ") and "Is a directory" in err and "\n" not in err, err


def test_main_stops_a_local_ray_it_started(capsys):
    import os

    import ray

    from hyvid.cluster import connect

    if ray.is_initialized():
        pytest.skip("another test's Ray is up in this process; connect() would (rightly) leave it alone")

    def starts_ray(args, s):
        connect.connect(num_cpus=1)
        assert connect.started_local() and os.environ.get("RAY_ADDRESS")
        raise RuntimeError("a library error after Ray started")

    COMMANDS["__probe"] = COMMANDS["jobs"]._replace(run=starts_ray, add_arguments=lambda p, s: None)
    try:
        assert main(["__probe"]) == 1
    finally:
        del COMMANDS["__probe"]
    assert not ray.is_initialized() and "RAY_ADDRESS" not in os.environ
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "hyvid __probe: error: RuntimeError: a library error after Ray started (run with --verbose for the " \
                  "traceback)"
