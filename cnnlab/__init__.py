"""cnnlab: convolutional neural networks from first principles on NumPy."""
from .autograd import Tensor, as_tensor, enable_grad, is_grad_enabled, no_grad, ones, tensor, zeros
from .ops import cat, stack
from .kernels.parallel import get_num_threads, set_num_threads
from .kernels.memory import reuse_freed_memory
from . import functional
from .gradcheck import GradcheckError, GradcheckResult, gradcheck
from .random import manual_seed
from . import nn
from .conv_matrix import conv_matrix
from .summary import summary
from . import data, models, optim, train
