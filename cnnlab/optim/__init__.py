"""Optimizers and learning-rate schedules (``cnnlab.optim``), step for step as ``torch.optim``."""
from . import lr_scheduler
from .adam import Adam, AdamW
from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "lr_scheduler"]
