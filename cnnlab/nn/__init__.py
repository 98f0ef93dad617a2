"""Layers (``cnnlab.nn``), named and initialised as in ``torch.nn``."""
from . import fusion, init
from .conv import Conv2d, LocallyConnected2d
from .layers import (ELU, GELU, CrossEntropyLoss, Dropout, Flatten, Identity, LeakyReLU, Linear, LogSoftmax,
                     MSELoss, NLLLoss, PReLU, ReLU, Sigmoid, Softmax, Tanh)
from .module import Module, ModuleList, Parameter, Sequential, eval_mode, model_dtype, observe_calls
from .normalization import BatchNorm1d, BatchNorm2d
from .pooling import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, GlobalAvgPool2d, GlobalMaxPool2d, MaxPool2d
from .residual import BasicBlock, Bottleneck, PadChannelsShortcut, Residual

__all__ = [
    "init", "fusion", "Module", "ModuleList", "Parameter", "Sequential", "observe_calls", "eval_mode", "model_dtype",
    "Conv2d", "LocallyConnected2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d",
    "GlobalAvgPool2d", "GlobalMaxPool2d", "Linear", "Flatten", "Identity", "ReLU", "LeakyReLU", "PReLU",
    "ELU", "GELU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Dropout", "BatchNorm1d", "BatchNorm2d",
    "CrossEntropyLoss", "NLLLoss", "MSELoss", "Residual", "BasicBlock", "Bottleneck", "PadChannelsShortcut",
]
