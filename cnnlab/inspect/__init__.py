"""Looking inside a trained network: filters, feature maps, attributions, synthesised
inputs, top activations and the feature space. Functions here return arrays; plots live
in :mod:`cnnlab.inspect.plots`."""
