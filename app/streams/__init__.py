"""The domain: stream lifecycle, readers, hub, spy. Nothing here imports FastAPI."""
