"""The one place that builds AWS SDK sessions and clients, for S3 and the backend.

Endpoints are left to botocore, so ``AWS_ENDPOINT_URL`` and ``AWS_ENDPOINT_URL_<SERVICE>``
(and ``endpoint_url`` in the shared config file) work as they do for every AWS tool;
credentials come from the standard chain (environment, profile, SSO, instance role...).
Callers own their retry policy, so botocore retries only a little ("standard" mode).

:func:`new_session` is an aioboto3 session. :func:`new_core_session` is the aiobotocore
session under it, without boto3's import cost (imports were much of a ``tpi sync`` of
small files); its clients come from the same :func:`client`.
"""

from __future__ import annotations

import os
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import AioSession

DEFAULT_CONCURRENCY = 16
DEFAULT_RETRIES = 3


def new_session(region: str | None = None, profile: str | None = None) -> Any:
    """An aioboto3 session on the standard credential chain; ``region`` overrides."""
    import aioboto3

    return aioboto3.Session(region_name=region or None, profile_name=profile or None)


def new_core_session(region: str | None = None, profile: str | None = None) -> AioSession:
    """The same as :func:`new_session`, as a bare aiobotocore session."""
    from aiobotocore.session import AioSession

    session = AioSession(profile=profile or None)
    if region:
        session.set_config_variable("region", region)
    return session


def client_config(concurrency: int = DEFAULT_CONCURRENCY, retries: int = DEFAULT_RETRIES,
                  **extra: Any) -> AioConfig:
    """Client options: a connection pool as large as the work done at once, few retries."""
    from aiobotocore.config import AioConfig

    return AioConfig(max_pool_connections=max(concurrency, 1), connect_timeout=10,
                     read_timeout=60, tcp_keepalive=True,
                     retries={"max_attempts": retries, "mode": "standard"}, **extra)


def client(session: Any, service: str, *, endpoint_url: str | None = None,
           concurrency: int = DEFAULT_CONCURRENCY, retries: int = DEFAULT_RETRIES,
           **config: Any) -> AbstractAsyncContextManager[Any]:
    """An async context manager yielding a client of either kind of session;
    ``endpoint_url`` None lets botocore choose."""
    make = getattr(session, "create_client", None) or session.client
    return make(service, endpoint_url=endpoint_url or None,
                config=client_config(concurrency, retries, **config))


def region_of(session: AioSession) -> str:
    """The configured region of a core session (``us-east-1`` when none is)."""
    return session.get_config_variable("region") or "us-east-1"


def configured_endpoint(session: AioSession, service: str) -> str | None:
    """The endpoint the environment or config file sets for ``service``, as botocore
    resolves it (service variable, global variable, config file; the ignore switch)."""
    try:
        from botocore.configprovider import ConfiguredEndpointProvider

        if session.get_config_variable("ignore_configured_endpoint_urls"):
            return None
        return ConfiguredEndpointProvider(
            full_config=session.full_config, scoped_config=session.get_scoped_config(),
            client_name=service).provide()
    except (ImportError, TypeError, AttributeError):  # botocore moved it: let clients decide
        return None


def s3_addressing(session: AioSession) -> str:
    """``s3.addressing_style`` of the config file (``auto`` when unset)."""
    s3 = session.get_scoped_config().get("s3") or {}
    return s3.get("addressing_style", "auto") if isinstance(s3, dict) else "auto"


class Frozen(NamedTuple):
    """Credentials as botocore's ``get_frozen_credentials`` gives them; read once from the
    environment, they stand for themselves (they never refresh)."""

    access_key: str
    secret_key: str
    token: str | None


class EnvSettings(NamedTuple):
    """What the S3 fast path needs, when the environment alone decides it."""

    credentials: Frozen
    region: str
    endpoint: str | None
    ca_bundle: str | None


def env_settings(region: str | None) -> EnvSettings | None:
    """The settings botocore would resolve, read from the environment without importing it
    (a visible part of every ``tpi sync``): only when keys are in the environment and
    no profile or config file could change anything; None sends the caller to botocore."""
    env = os.environ
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret or _config_may_matter(env):
        return None
    token = env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN") or None
    return EnvSettings(Frozen(key, secret, token),
                       region or env.get("AWS_DEFAULT_REGION") or "us-east-1",
                       _env_endpoint(env), env.get("AWS_CA_BUNDLE") or None)


def _config_may_matter(env: Any) -> bool:
    if any(env.get(name) for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE",
                                      "AWS_CREDENTIAL_EXPIRATION")):
        return True
    path = os.path.expanduser(env.get("AWS_CONFIG_FILE") or "~/.aws/config")
    try:
        return os.stat(path).st_size > 0
    except OSError:  # no config file
        return False


def _env_endpoint(env: Any) -> str | None:
    if env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        return None
    return env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
