"""Training: the loop (``fit``), evaluation and checkpoints."""
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .trainer import History, TrainingDiverged, TrainingInterrupted, evaluate, fit

__all__ = ["fit", "evaluate", "History", "TrainingDiverged", "TrainingInterrupted",
           "save_checkpoint", "load_checkpoint", "Checkpoint", "CheckpointError"]
