"""The one registry of model, metric and split names, used by the CLI, MLflow run names/tags,
`video_scores`, the hybrid's late fusions and the reports."""
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
SPATIAL_SVM = "spatial_svm"
MOTION_SVM = "motion_svm"
SVM_MKL = "svm_mkl"
M_DBM = "m_dbm"
RDNN = "rdnn"
HYBRID = "hybrid"

CNN_MODELS = (SPATIAL_CNN, MOTION_CNN, TWO_STREAM_CNN)
LSTM_MODELS = (SPATIAL_LSTM, MOTION_LSTM)
FUSION_MODELS = (FUSION, FUSION_NOREG)
# Table 2's baselines that `hyvid train --models baselines` fits by default (the cheap ones), and
# every Table 2 row `--models all` adds (the slower SVM-MKL, M-DBM and RDNN, and the one-stream SVMs).
BASELINE_MODELS = (FUSION_NOREG, NN_EF, NN_LF, SVM_EF, SVM_LF)
EXTRA_BASELINE_MODELS = (SPATIAL_SVM, MOTION_SVM, SVM_MKL, M_DBM, RDNN)
# The hybrid's components (Sec. 4.2.3): the two LSTMs and the regularized fusion network.
HYBRID_COMPONENTS = (SPATIAL_LSTM, MOTION_LSTM, FUSION)
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
    SPATIAL_SVM,
    MOTION_SVM,
    SVM_MKL,
    M_DBM,
    RDNN,
    HYBRID,
)
STREAMS = ("spatial", "motion")

# Table 1's late average fusions ("+"): row name -> the models whose scores are averaged.
LATE_FUSIONS: dict[str, tuple[str, ...]] = {
    f"{SPATIAL_CNN}+{SPATIAL_LSTM}": (SPATIAL_CNN, SPATIAL_LSTM),
    f"{MOTION_CNN}+{MOTION_LSTM}": (MOTION_CNN, MOTION_LSTM),
    f"{SPATIAL_CNN}+{MOTION_CNN}+{SPATIAL_LSTM}+{MOTION_LSTM}": (SPATIAL_CNN, MOTION_CNN, SPATIAL_LSTM, MOTION_LSTM),
}

# The paper's metrics, as every stage names them (MLflow logs them as f"{subset}_{metric}").
ACCURACY = "accuracy"
MEAN_CLASS_ACCURACY = "mean_class_accuracy"
MAP = "map"
TOP5 = "top5"
METRICS = (ACCURACY, MEAN_CLASS_ACCURACY, MAP, TOP5)

# UCF-101's three official train/test splits (CCV-like manifests use split 1).
SPLITS = (1, 2, 3)

# The paper's numbers (UCF-101 accuracy %, CCV mAP %), for reports. Tables 1-3 of Wu et al. 2015.
PAPER_RESULTS = {
    SPATIAL_CNN: (80.1, 75.0),
    MOTION_CNN: (77.5, 58.9),
    SPATIAL_LSTM: (83.3, 43.3),
    MOTION_LSTM: (76.6, 54.7),
    f"{SPATIAL_CNN}+{SPATIAL_LSTM}": (84.0, 77.9),
    f"{MOTION_CNN}+{MOTION_LSTM}": (81.4, 70.9),
    f"{SPATIAL_CNN}+{MOTION_CNN}+{SPATIAL_LSTM}+{MOTION_LSTM}": (90.1, 81.7),
    SPATIAL_SVM: (78.6, 74.4),
    MOTION_SVM: (78.2, 57.9),
    SVM_EF: (86.6, 75.3),
    SVM_MKL: (86.8, 75.4),
    M_DBM: (86.9, 75.3),
    RDNN: (88.1, 75.9),
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


def primary_metric(multilabel: bool) -> str:
    """The metric a dataset is reported and selected by: mAP for multi-label data (CCV), else accuracy."""
    return MAP if multilabel else ACCURACY


def check_split(split: int, what: str = "split") -> int:
    """Validate one official split number; the error names the value and the valid ones."""
    if split not in SPLITS:
        raise ValueError(f"{what} must be one of {', '.join(map(str, SPLITS))}, got {split!r}")
    return int(split)


def check_splits(splits: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """Validate a non-empty list of split numbers."""
    splits = tuple(int(s) for s in splits)
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise ValueError(f"splits must be among {', '.join(map(str, SPLITS))}; got {list(splits)}")
    return splits
