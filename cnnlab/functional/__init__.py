"""Stateless ops, named and ordered as in ``torch.nn.functional``."""
from .conv import conv2d, fold, locally_connected2d, true_conv2d, unfold
