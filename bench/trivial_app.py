"""The ceiling of bench/api_load.py: the smallest FastAPI endpoint, served by uvicorn like the API."""

from fastapi import FastAPI

app = FastAPI()


@app.get("/ping")
def ping() -> dict[str, str]:
    """Answer at once."""
    return {"status": "ok"}
