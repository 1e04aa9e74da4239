"""The one training loop of latentvi, its checkpoints, metrics logging and data-parallel launch.

```python
from latentvi.train import TrainConfig, fit

result = fit(model, make_batches, num_batches, TrainConfig(epochs=10, out="runs/vae"))
result = fit(model, make_batches, num_batches, TrainConfig(epochs=20, out="runs/vae"),
             resume=True)  # continues bitwise identically
```

See :mod:`latentvi.train.loop` for the model/data contracts, :mod:`latentvi.train.checkpoint`
for the checkpoint layout, :mod:`latentvi.train.metrics` for the metric files and
:mod:`latentvi.train.distributed` for multi-process training.
"""

from latentvi.train.checkpoint import find_latest, load_checkpoint, save_checkpoint
from latentvi.train.config import TrainConfig
from latentvi.train.errors import CheckpointError, TrainingDivergedError
from latentvi.train.evaluate import evaluate
from latentvi.train.loop import TrainResult, fit
from latentvi.train.metrics import MetricsLogger, read_metrics

__all__ = [
    "CheckpointError",
    "MetricsLogger",
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedError",
    "evaluate",
    "find_latest",
    "fit",
    "load_checkpoint",
    "read_metrics",
    "save_checkpoint",
]
