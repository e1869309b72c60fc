"""`dojo train occupancy`: train the occupancy network here, simulate it at scale, report.

    from dojo.train import TrainOptions, train_occupancy
    result = train_occupancy(TrainOptions(out="runs/demo", steps=600))
    result.val_iou, result.history.baseline_iou, result.files["report"]

See docs/train.md. Layout: `options` (settings and progress events), `loop` (model, schedule,
steps, IoU), `checkpoint`, `simulated` (the large preset on Dojo and GPUs, data path,
utilisation), `report` (report.html, trace.json, metrics.json), `run` (the job).
"""

from dojo.train.loop import evaluate, iou, lr_at
from dojo.train.options import PRECISIONS, Progress, TrainOptions
from dojo.train.run import History, TrainResult, train_occupancy

__all__ = [
    "PRECISIONS",
    "History",
    "Progress",
    "TrainOptions",
    "TrainResult",
    "evaluate",
    "iou",
    "lr_at",
    "train_occupancy",
]
