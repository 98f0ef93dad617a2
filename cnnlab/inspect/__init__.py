"""Looking inside a trained network: filters, feature maps, attributions, synthesised
inputs, top activations and the feature space. Functions here return arrays; pictures of
them are drawn by :mod:`cnnlab.inspect.plots` (needs matplotlib: ``pip install
'cnnlab[plots]'``), which is not imported here, so the arrays need NumPy only.

=========================  ===============================================================
layers                     :func:`layer_names`, :func:`get_layer`, :func:`capture`
weights                    :func:`first_layer_filters`, :func:`layer_filters`,
                           :func:`filter_grid`, :func:`filter_gradients`
feature maps               :func:`feature_maps`, :func:`maps_grid`
attribution                :func:`occlusion`, :func:`saliency`, :func:`smoothgrad`,
                           :func:`grad_cam`, :func:`gaussian_blur`
synthesis                  :func:`maximize_activation`
top activations            :func:`receptive_field`, :func:`top_activations`
feature space              :func:`extract_features`, :func:`embed`, :func:`knn_accuracy`,
                           :func:`nearest_neighbors`, :func:`pixel_neighbors`
metrics                    :func:`confusion_matrix`, :func:`read_metrics`
=========================  ===============================================================
"""
from .attribution import (GradCAMResult, OcclusionResult, SaliencyResult, gaussian_blur, grad_cam, occlusion,
                          saliency, smoothgrad)
from .features import embed, extract_features, knn_accuracy, nearest_neighbors, pixel_neighbors
from .layers import capture, get_layer, layer_names
from .maps import feature_maps, maps_grid
from .metrics import Confusion, confusion_matrix, read_metrics
from .synthesis import SynthesisResult, maximize_activation
from .top import ReceptiveField, TopActivations, receptive_field, top_activations
from .weights import filter_gradients, filter_grid, first_layer_filters, layer_filters

__all__ = ["layer_names", "get_layer", "capture",
           "first_layer_filters", "layer_filters", "filter_grid", "filter_gradients",
           "feature_maps", "maps_grid",
           "occlusion", "saliency", "smoothgrad", "grad_cam", "gaussian_blur",
           "OcclusionResult", "SaliencyResult", "GradCAMResult",
           "maximize_activation", "SynthesisResult",
           "receptive_field", "top_activations", "ReceptiveField", "TopActivations",
           "extract_features", "embed", "knn_accuracy", "nearest_neighbors", "pixel_neighbors",
           "confusion_matrix", "read_metrics", "Confusion"]
