"""New image types: the mask model's image features and the novelty score fitted on them."""
