"""The mask model: its configuration, network, training, threshold, test-time flipping and
prediction, and the label audit it makes possible."""
