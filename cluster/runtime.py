"""Starting and stopping Ray for a job.

`init_ray()` with no address starts a private local cluster bound to loopback only (127.0.0.1): no
port and no dashboard is reachable from another machine. Ray binds to the machine's own address by
default on Linux; `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` makes it resolve its node address to
127.0.0.1 (REFERENCE.md section 6). With an address (``"ray://..."``, ``"host:port"`` or ``"auto"``)
the driver joins that cluster instead; Ray 2.60 clusters use token authentication by default, so the
driver needs the cluster's token as any Ray client does (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``
or ``~/.ray/auth_token``); nothing here creates, reads or prints one.
"""

from __future__ import annotations

import logging
import os

_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


class _DropTokenEnabledNotice(logging.Filter):
    """Drops Ray's "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled
    to opt out..." line, which Ray logs on every ``ray.init`` that applies its default: a normal run
    shows only the tool's own lines. Ray's authentication is unchanged, and its warning that
    authentication is *disabled* still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def _quiet_token_notice() -> None:
    logger = logging.getLogger(_TOKEN_NOTICE_LOGGER)
    if not any(isinstance(f, _DropTokenEnabledNotice) for f in logger.filters):
        logger.addFilter(_DropTokenEnabledNotice())


def local_cluster_env() -> None:
    """Environment for Ray processes started from here: node address 127.0.0.1 (also when ray was
    imported already), and a GCS connect timeout that survives a loaded machine (Ray's is 5 s)."""
    os.environ[_LOOPBACK_ENV] = "0"
    os.environ.setdefault("RAY_gcs_rpc_server_connect_timeout_s", "30")
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def init_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: float | None = None,
    system_config: dict | None = None,
) -> None:
    """Start a local loopback-only Ray, or join the cluster at `address`.

    Args:
        address: None for a private local cluster; anything else is passed to ``ray.init`` to join.
        num_cpus, num_gpus: resources of the local cluster (``num_gpus`` may be logical GPUs on a CPU
            machine, which is how GPU scheduling is tested). Ignored when joining.
        system_config: Ray ``_system_config`` for a local cluster (e.g. a fast health check).
    Raises:
        ValueError: negative resources.
        RuntimeError: Ray could not start or the cluster could not be reached.
    """
    if num_cpus is not None and num_cpus < 1:
        raise ValueError(f"num_cpus must be >= 1, got {num_cpus!r}")
    if num_gpus is not None and num_gpus < 0:
        raise ValueError(f"num_gpus must be >= 0, got {num_gpus!r}")
    import ray

    if ray.is_initialized():
        return
    _quiet_token_notice()
    if address is not None:
        try:
            ray.init(address=address, log_to_driver=True, configure_logging=False)
        except Exception as e:  # ConnectionError, RuntimeError, ... from inside ray
            why = f"{type(e).__name__}: {e}"
            raise RuntimeError(f"could not join the Ray cluster at {address!r}: {why}") from e
        return
    local_cluster_env()
    kwargs: dict = {"_system_config": system_config} if system_config else {}
    for attempt in range(2):
        try:
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                     _node_ip_address="127.0.0.1", log_to_driver=True, configure_logging=False, **kwargs)
            return
        except Exception as e:  # RaySystemError, ConnectionError, ... from inside ray
            ray.shutdown()
            if attempt == 1:
                raise RuntimeError(f"could not start a local Ray cluster: {type(e).__name__}: {e}") from e


def shutdown_ray() -> None:
    """Disconnect from (and, for a local cluster, stop) Ray; a no-op when not connected."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
