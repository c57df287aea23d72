"""HTTP entry points of the token service, wired to ``shared`` by ``service``."""
