"""FastAPI peer for the Coreiix benchmark: same endpoints, same JSON bodies.

Run under gunicorn with the uvicorn worker (see gunicorn_conf.py); the bench
driver starts it, nothing else should depend on it.
"""

import os
import time

import fastapi
from fastapi import FastAPI

_STARTED = time.monotonic()
_WORKERS = int(os.environ.get("WORKERS", "1"))
_PROFILE = os.environ.get("DEPLOYMENT_PROFILE", "small")

app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@app.get("/healthz")
async def healthz():
    return {"status": "ok"}


@app.get("/")
async def root():
    return {
        "name": "fastapi-peer",
        "version": fastapi.__version__,
        "profile": _PROFILE,
        # Set per worker by gunicorn_conf.post_fork; read at request time
        # because this module may be imported before the fork.
        "instance": int(os.environ.get("PEER_INSTANCE", "1")),
        "pid": os.getpid(),
        "uptime_seconds": round(time.monotonic() - _STARTED, 3),
        "workers": _WORKERS,
        # One event loop thread per uvicorn worker.
        "threads": 1,
    }
