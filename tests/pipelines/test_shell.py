"""What a shell user meets: `hyvid videos`, progress lines of long commands when output is no terminal,
and flags that go together (`evaluate --experiment --model`, `runs --all`)."""
from __future__ import annotations

import json
import logging

import pytest
from helpers.toy_store import CLASS_NAMES, build_toy_store

from hyvid.cluster.settings import Settings
from hyvid.pipelines import logs
from hyvid.pipelines.cli import COMMANDS, build_parser, main


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    store = str(tmp_path_factory.mktemp("videos") / "store")
    build_toy_store(store, videos_per_group=1)
    return store


def test_videos_lists_ids_of_a_split_subset_and_class(toy_store, capsys):
    from hyvid.store.feature_store import FeatureStore

    assert main(["videos", "--store", toy_store]) == 0
    every = capsys.readouterr().out.split()
    assert every == FeatureStore(toy_store).videos()["video_id"].to_pylist() and len(every) == 4 * 7

    assert main(["videos", "--store", toy_store, "--split", "1", "--subset", "test", "--class", CLASS_NAMES[0]]) == 0
    test_ids = capsys.readouterr().out.split()
    assert test_ids == [f"{CLASS_NAMES[0]}/v_{CLASS_NAMES[0]}_{g}_c00" for g in ("g01", "g02")]

    assert main(["videos", "--store", toy_store, "--split", "1", "--subset", "val", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and {r["subset"] for r in rows} == {"val"} and set(rows[0]) == {"video_id", "class_name", "subset",
                                                                                "status"}
    assert main(["videos", "--store", toy_store, "--status", "failed"]) == 0
    assert capsys.readouterr().err.startswith("hyvid videos: no video")

    assert main(["videos", "--store", toy_store, "--subset", "test"]) == 2  # a subset belongs to a split
    assert "needs --split" in capsys.readouterr().err
    assert main(["videos", "--store", toy_store, "--class", "nope"]) == 2
    assert "unknown class 'nope'" in capsys.readouterr().err


def test_evaluate_logs_to_the_given_experiment_with_a_given_model_and_runs_all_lists_nested(tmp_path):
    s = Settings()
    args = build_parser(s).parse_args(["evaluate", str(tmp_path), "--model", "exported/hybrid", "--experiment",
                                       "checks", "--allow-failures"])
    cfg = COMMANDS["evaluate"].config(args, s)
    assert (cfg.model_uri, cfg.experiment, cfg.allow_failures) == ("exported/hybrid", "checks", True)
    assert COMMANDS["runs"].config(build_parser(s).parse_args(["runs", "--all"]), s).nested is True
    assert COMMANDS["runs"].config(build_parser(s).parse_args(["runs"]), s).nested is False


def test_progress_lines_come_at_most_once_an_interval_and_for_the_last_epoch(monkeypatch, caplog):
    clock = [100.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: clock[0])
    every = logs.Every(10.0)
    seen = []
    for t in (0.0, 3.0, 9.9, 10.0, 12.0, 25.0):
        clock[0] = 100.0 + t
        seen.append(every.due())
    assert seen == [True, False, False, True, False, True]
    assert every.due(force=True)  # the last step is always shown

    logger = logging.getLogger("hyvid.test_progress")
    with caplog.at_level(logging.INFO, logger="hyvid"):
        for epoch in range(30):  # 30 epochs in 29 s: the first, one 10 s later, one 20 s later, the last
            clock[0] = 200.0 + epoch
            logs.epoch_line(logger, "motion_lstm", epoch, 30, {"train_loss": 0.5, "val_accuracy": 0.75})
    lines = [r.getMessage() for r in caplog.records if "motion_lstm epoch" in r.getMessage()]
    assert [line.split(":")[0] for line in lines] == ["motion_lstm epoch 1/30", "motion_lstm epoch 11/30",
                                                      "motion_lstm epoch 21/30", "motion_lstm epoch 30/30"]
    assert lines[-1].endswith("train_loss 0.5, val_accuracy 0.75")
