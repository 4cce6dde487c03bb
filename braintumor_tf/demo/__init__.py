"""``braintumor-tf demo``: a local page to try the models on your own images."""
