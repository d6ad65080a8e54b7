"""`monovl serve`: an OpenAI-compatible HTTP server with continuous batching, safe image inputs and a
chat page. `create_app` builds the FastAPI app; `monovl.cli.serve` runs it under uvicorn."""

from .app import ServeConfig, create_app
from .media import MediaError, MediaPolicy

__all__ = ["MediaError", "MediaPolicy", "ServeConfig", "create_app"]
