"""gunicorn settings for the benchmark peer; the driver passes bind/workers."""

worker_class = "uvicorn.workers.UvicornWorker"
# Access logs off, like coreiix (COREIIX_LOG=warn) and nginx (access_log off).
accesslog = None
loglevel = "warning"
# Bound shutdown so the driver never waits long between contenders.
graceful_timeout = 5


def post_fork(server, worker):
    import os

    # worker.age counts spawns from 1: a stable stand-in for coreiix's instance number.
    os.environ["PEER_INSTANCE"] = str(worker.age)
