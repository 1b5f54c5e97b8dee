"""The standalone pyfunc wrappers' own checks, without MLflow's signature in front of them: inputs the
signature cannot describe are refused in one line naming the expected shapes, and the hybrid's inputs
(paths, base64 text, bytes) are told apart."""
from __future__ import annotations

import base64

import numpy as np
import pandas as pd
import pytest
import torch

from hyvid.pipelines.inference import components as C
from hyvid.pipelines.inference import packaging

CLASSES = ["a", "b", "c"]
FUSION = packaging.component_config("fusion", "streams", {"spatial": [-1, 16], "motion": [-1, 8]}, CLASSES, False)
LSTM = packaging.component_config("motion_lstm", "sequence", {"": [-1, -1, 8]}, CLASSES, False)


@pytest.mark.parametrize("config, given, says", [
    (FUSION, {"spatial": np.zeros((2, 25, 1024), np.float32), "motion": np.zeros((2, 8), np.float32)},
     "got 'spatial' of shape (2, 25, 1024)"),
    (FUSION, {"spatial": np.zeros((2, 16), np.float32), "motion": np.zeros((3, 8), np.float32)}, "hold 2 and 3 rows"),
    (FUSION, {"spatial": np.full((1, 16), np.nan, np.float32), "motion": np.zeros((1, 8), np.float32)}, "NaN"),
    (FUSION, {"spatial": np.zeros((1, 16), np.float32)}, "missing ['motion']"),
    (FUSION, np.zeros((2, 16), np.float32), "give a dict of arrays"),
    (LSTM, np.zeros((0, 25, 8), np.float32), "got input of shape (0, 25, 8)"),
    (LSTM, np.zeros((2, 8), np.float32), "got input of shape (2, 8)"),
])
def test_inputs_the_signature_cannot_describe_are_refused_in_one_line(config, given, says):
    with pytest.raises(ValueError) as e:
        C.check_inputs(config, given)
    text = str(e.value)
    assert "\n" not in text and says in text, text
    # ... naming what the model takes.
    assert text.startswith(f"{config['model']} takes ") and ("[batch, 16]" in text or "[batch, T, 8]" in text)


def test_a_component_scores_as_the_fitted_model_does():
    from hyvid.models.fusion import RegularizedFusionNet
    from hyvid.models.lstm import StreamLSTM

    torch.manual_seed(0)
    net, lstm = RegularizedFusionNet([16, 8], 3, abstraction=4, fusion=4).eval(), StreamLSTM(8, 3, hidden=(6,)).eval()
    x = {"spatial": np.random.default_rng(0).random((4, 16), dtype=np.float32),
         "motion": np.random.default_rng(1).random((4, 8), dtype=np.float32)}
    got = C.component_scores(FUSION, net, C.check_inputs(FUSION, x))
    with torch.no_grad():
        np.testing.assert_allclose(got, net([torch.from_numpy(x["spatial"]), torch.from_numpy(x["motion"])]).numpy())
        seq = np.random.default_rng(2).random((2, 5, 8), dtype=np.float32)
        want = torch.softmax(lstm.video_logits(torch.from_numpy(seq)), dim=1).numpy()
    np.testing.assert_allclose(C.component_scores(LSTM, lstm, C.check_inputs(LSTM, seq)), want, rtol=1e-6)


def test_the_hybrid_tells_paths_base64_files_and_bytes_apart(tmp_path):
    from hyvid.pipelines.inference.pyfunc import _items, _materialize

    video = b"RIFF\x00\x00\x00\x00AVI LIST"
    assert _items(["a.avi", "b.avi"]) == [("path", "a.avi"), ("path", "b.avi")]
    assert _items("a.avi") == [("path", "a.avi")]
    assert _items(pd.DataFrame({"path": [["a.avi", "b.avi"]]})) == [("path", "a.avi"), ("path", "b.avi")]
    b64 = base64.b64encode(video).decode()
    items = _items(pd.DataFrame({"video": [b64, "not base64!"]})) + _items([video])
    assert [k for k, _ in items] == ["base64", "base64", "bytes"]
    paths, names, errors = _materialize(items, str(tmp_path))
    assert paths[0].endswith(".avi") and open(paths[0], "rb").read() == video and names[0] is None
    assert paths[1] is None and "not base64" in errors[1] and "'path' column" in errors[1]
    assert open(paths[2], "rb").read() == video
    with pytest.raises(ValueError, match="'path' column"):
        _items(pd.DataFrame({"x": [1], "y": [2]}))
