"""A web page and HTTP endpoint that predict one image with a trained run."""
