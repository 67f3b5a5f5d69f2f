"""The HTTP server: one FastAPI app with a router per noun; boot endpoints outside /api/v1."""
