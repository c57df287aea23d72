"""Code shared by the token and metadata functions."""
