"""Credentials: managed identity / workload identity / client secret through DefaultAzureCredential,
or the sandbox's static token — which is only ever handed to loopback endpoints."""

from __future__ import annotations

import time
from enum import StrEnum
from types import TracebackType
from typing import Any, Self

from azure.core.credentials import AccessToken
from azure.core.credentials_async import AsyncTokenCredential

from tibridge.common.urls import is_loopback_url

# Not a secret: the local sandbox accepts exactly this bearer token and nothing else.
SANDBOX_BEARER_TOKEN = "tibridge-sandbox-token"  # noqa: S105


class CredentialMode(StrEnum):
    DEFAULT = "default"
    SANDBOX = "sandbox"


class StaticTokenCredential(AsyncTokenCredential):
    """Returns a fixed bearer token; for the local sandbox only."""

    def __init__(self, token: str = SANDBOX_BEARER_TOKEN, lifetime_seconds: int = 3600) -> None:
        self._token = token
        self._lifetime = lifetime_seconds

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token, int(time.time()) + self._lifetime)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        return None


class CredentialError(ValueError):
    pass


def build_credential(mode: CredentialMode, *endpoints: str) -> AsyncTokenCredential:
    """The credential for `mode`; the sandbox token is refused unless every endpoint is loopback."""
    if mode is CredentialMode.SANDBOX:
        remote = [url for url in endpoints if not is_loopback_url(url)]
        if remote:
            raise CredentialError(
                f"TIBRIDGE_CREDENTIAL=sandbox only works with loopback endpoints; {remote[0]} is not one — "
                "set TIBRIDGE_CREDENTIAL=default"
            )
        return StaticTokenCredential()
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential()
