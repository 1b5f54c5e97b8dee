"""Cross-validation of the fusion network's λ2 and λ3 (Sec. 3.3): the grid, and the choice.

Every trial trains the regularized fusion net on the train subset and scores it on val (a fit of
the train stage's pool, `training.loops.cv_trial_config`); each is an MLflow run nested under the
``fusion`` parent run (``mlflow.parentRunId``). The chosen values are logged on the parent, and
the final ``fusion`` fit then uses them.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# The paper chooses λ2 and λ3 "in the same range as λ1" (3e-5). At lr 0.7 such values shrink W_E
# by ~1e-5 per step, which changes nothing measurable on the demo (every trial tied with λ = 0),
# so the grid reaches up to where the ℓ2,1 term zeroes about half of the fusion rows on the demo's
# standardized features (λ2 = 3e-3); larger values (1e-2) zeroed ~90% and collapsed accuracy.
# 0 is in the grid so that the search can also decide that a penalty does not help.
DEFAULT_LAM2_GRID = (0.0, 1e-3, 3e-3)
DEFAULT_LAM3_GRID = (0.0, 1e-4)


def choose(trials: list[tuple[float, float, float, float, str]]) -> tuple[float, float, float]:
    """Best val metric; ties go to the lower val loss, then to the stronger regularization.

    The last rule prefers the sparser network when the data cannot tell the candidates apart.
    """
    if not trials:
        raise ValueError("no finished λ2/λ3 trial to choose from; see the trials' errors above")
    lam2, lam3, val, _, _ = max(trials, key=lambda t: (t[2], -t[3], t[0] + t[1]))
    return lam2, lam3, val


def log_choice(trials: list[tuple[float, float, float, float, str]], tracking_uri: str, parent_run_id: str,
               lam2_grid: tuple[float, ...], lam3_grid: tuple[float, ...]) -> tuple[float, float, float]:
    """Choose λ2/λ3 from the finished trials (see `choose`) and log the choice on the fusion run."""
    from mlflow import MlflowClient

    lam2, lam3, best_val = choose(trials)
    client = MlflowClient(tracking_uri)
    client.log_param(parent_run_id, "cv_lam2_grid", list(lam2_grid))
    client.log_param(parent_run_id, "cv_lam3_grid", list(lam3_grid))
    client.log_param(parent_run_id, "cv_trials", len(trials))
    client.log_metric(parent_run_id, "cv_best_val", best_val)
    log.info("fusion CV: chose lam2=%g lam3=%g (val %.4f) out of %d trials", lam2, lam3, best_val, len(trials))
    return lam2, lam3, best_val
