"""The supervisor's HTTP side (FastAPI app served by uvicorn on the supervisor's event loop)."""
