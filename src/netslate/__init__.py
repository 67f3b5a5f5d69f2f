"""netslate: stateless fleets from versioned, signed images and layered configuration."""

__version__ = "0.1.0"
