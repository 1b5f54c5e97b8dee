"""The one registry of model names, used by the CLI, MLflow run names/tags, `video_scores` and reports."""
from __future__ import annotations

SPATIAL_CNN = "spatial_cnn"
MOTION_CNN = "motion_cnn"
TWO_STREAM_CNN = "two_stream_cnn"
SPATIAL_LSTM = "spatial_lstm"
MOTION_LSTM = "motion_lstm"
FUSION = "fusion"
FUSION_NOREG = "fusion_noreg"
NN_EF = "nn_ef"
NN_LF = "nn_lf"
SVM_EF = "svm_ef"
SVM_LF = "svm_lf"
HYBRID = "hybrid"

CNN_MODELS = (SPATIAL_CNN, MOTION_CNN, TWO_STREAM_CNN)
LSTM_MODELS = (SPATIAL_LSTM, MOTION_LSTM)
FUSION_MODELS = (FUSION, FUSION_NOREG)
BASELINE_MODELS = (FUSION_NOREG, NN_EF, NN_LF, SVM_EF, SVM_LF)
MODEL_NAMES = (
    SPATIAL_CNN,
    MOTION_CNN,
    TWO_STREAM_CNN,
    SPATIAL_LSTM,
    MOTION_LSTM,
    FUSION,
    FUSION_NOREG,
    NN_EF,
    NN_LF,
    SVM_EF,
    SVM_LF,
    HYBRID,
)
STREAMS = ("spatial", "motion")

# The paper's numbers (UCF-101 accuracy %, CCV mAP %), for reports. Tables 1-3 of Wu et al. 2015.
PAPER_RESULTS = {
    SPATIAL_CNN: (80.1, 75.0),
    MOTION_CNN: (77.5, 58.9),
    SPATIAL_LSTM: (83.3, 43.3),
    MOTION_LSTM: (76.6, 54.7),
    f"{SPATIAL_CNN}+{SPATIAL_LSTM}": (84.0, 77.9),
    f"{MOTION_CNN}+{MOTION_LSTM}": (81.4, 70.9),
    f"{SPATIAL_CNN}+{MOTION_CNN}+{SPATIAL_LSTM}+{MOTION_LSTM}": (90.1, 81.7),
    SVM_EF: (86.6, 75.3),
    SVM_LF: (85.3, 74.9),
    NN_EF: (86.5, 75.6),
    NN_LF: (85.1, 75.2),
    TWO_STREAM_CNN: (86.2, 75.8),
    FUSION_NOREG: (87.0, 75.4),
    FUSION: (88.4, 76.2),
    HYBRID: (91.3, 83.5),
}


def check_model_names(names: list[str] | tuple[str, ...]) -> list[str]:
    """Validate user-given model names against the registry; the error lists the valid ones."""
    bad = [n for n in names if n not in MODEL_NAMES]
    if bad:
        raise ValueError(f"unknown model name(s) {bad}; valid names are {list(MODEL_NAMES)}")
    return list(names)
