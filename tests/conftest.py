"""Shared fixtures: a moto S3 server on loopback and one local Ray for the whole session.

Dummy AWS credentials are set at import, before any Ray starts, so Ray worker processes (which
inherit the environment of the raylet, fixed when Ray starts) can reach the moto server too; the
real credentials of whoever runs the tests are never used. `s3_server` also exports AWS_ENDPOINT_URL,
and `ray_local` starts after it for the same reason.

Tests that need a Ray of their own (ray.cluster_utils.Cluster in test_faults.py) call
`ray.shutdown()` first; `ray_local` re-initialises lazily, so the order of modules does not matter
for correctness. They are still moved to the end of the run (`pytest_collection_modifyitems`), so the
shared Ray starts once.
"""

from __future__ import annotations

import os
import socket

import pytest

_DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
os.environ.update(_DUMMY_AWS)
os.environ.pop("AWS_PROFILE", None)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray on 127.0.0.1 only (REFERENCE.md 6)


OWN_RAY_FIXTURES = ("three_node_cluster",)


def pytest_collection_modifyitems(config, items):
    """Run the tests that replace the shared Ray with their own cluster last (stable order otherwise)."""
    items.sort(key=lambda item: any(f in getattr(item, "fixturenames", ()) for f in OWN_RAY_FIXTURES))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1; yields its endpoint URL (e.g. ``http://127.0.0.1:40123``).

    Use it through s3fs like a user pointing at MinIO:
    ``storage_options={"endpoint_url": s3_server}`` (AWS_ENDPOINT_URL is exported as well).
    Buckets need names of >= 3 characters; listings are cached by s3fs until ``refresh=True``.
    """
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    old = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = url
    try:
        yield url
    finally:
        server.stop()
        if old is None:
            os.environ.pop("AWS_ENDPOINT_URL", None)
        else:
            os.environ["AWS_ENDPOINT_URL"] = old


@pytest.fixture(scope="session")
def _ray_session():
    """Shuts the shared Ray down at the end of the session (whoever started it last)."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def ray_local(s3_server, _ray_session):
    """The shared local Ray: 2 CPUs, 2 logical GPUs, no dashboard, bound to 127.0.0.1.

    Started once and reused by every test; started again if a test (e.g. a multi-node cluster test)
    shut it down. Depends on `s3_server` so the Ray workers inherit AWS_ENDPOINT_URL.
    """
    import ray

    from cluster.runtime import init_ray

    if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) < 2:
        ray.shutdown()  # someone else's cluster is still connected
    init_ray(num_cpus=2, num_gpus=2)
    yield ray
