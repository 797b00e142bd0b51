"""Log a held-out evaluation to the training run whose model it scored."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping

from medseg.tracking.connect import make_client, resolve_tracking_uri

logger = logging.getLogger("medseg.tracking")


def log_heldout_metrics(run_id: str, metrics: Mapping[str, float], tracking_uri: str | None = None,
                        prefix: str = "heldout_") -> bool:
    """Add ``metrics`` (e.g. ``{"dice_WT": 0.84}``) to the finished run ``run_id`` as ``heldout_dice_WT``.

    Non-finite values (an HD95 of an empty case) are left out. A tracking problem is a warning,
    not an error: the evaluation itself is already written.

    Returns:
        Whether the metrics were logged.
    """
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    values = [Metric(f"{prefix}{k}", float(v), stamp, 0) for k, v in metrics.items() if math.isfinite(float(v))]
    try:
        make_client(resolve_tracking_uri(tracking_uri)).log_batch(run_id, metrics=values)
    except Exception as err:  # noqa: BLE001 - any MLflow or network failure
        logger.warning("could not log the held-out metrics to MLflow run %s: %s", run_id,
                       str(err).splitlines()[0] if str(err) else type(err).__name__)
        return False
    return True
