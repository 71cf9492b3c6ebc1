"""An OpenAI-compatible HTTP server on FastAPI: a local target through the DraftEngine, or a compression proxy.

``create_app(engine, ServeConfig(...))`` builds the app; ``draft-rag serve`` runs it with uvicorn.
"""

from .app import ServeConfig, create_app
from .connection import timed_protocol
from .errors import ApiError

__all__ = ["ApiError", "ServeConfig", "create_app", "timed_protocol"]
