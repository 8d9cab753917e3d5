"""The servicebus adapter's construction errors: one sentence naming the setting, never the secret."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from tibridge.common.bus.port import BusError
from tibridge.common.bus.servicebus import ServiceBusBus

SECRET = "c2VjcmV0LWtleS1kby1ub3QtbG9n"


@pytest.mark.parametrize(
    "connection_string",
    [
        "",
        "not a connection string",
        f"Endpoint=;SharedAccessKeyName=root;SharedAccessKey={SECRET}",
        f"Endpoint=sb://contoso.servicebus.windows.net/;SharedAccessKey={SECRET}",
    ],
)
def test_a_malformed_connection_string_names_the_setting_and_hides_the_key(connection_string: str) -> None:
    with pytest.raises(BusError) as raised:
        ServiceBusBus.from_connection_string(SecretStr(connection_string))
    message = str(raised.value)
    assert message.startswith("TIBRIDGE_SERVICEBUS_CONNECTION_STRING is not a Service Bus connection string")
    assert SECRET not in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "namespace", ["", "https://contoso.servicebus.windows.net", "contoso.servicebus.windows.net:5671"]
)
def test_a_namespace_must_be_a_bare_host_name(namespace: str) -> None:
    with pytest.raises(BusError, match=r"^TIBRIDGE_SERVICEBUS_NAMESPACE must be a fully-qualified namespace"):
        ServiceBusBus.from_namespace(namespace, credential=object())  # type: ignore[arg-type]


async def test_a_well_formed_connection_string_builds_a_bus_without_connecting() -> None:
    bus = ServiceBusBus.from_connection_string(
        SecretStr(
            f"Endpoint=sb://127.0.0.1:1;SharedAccessKeyName=root;SharedAccessKey={SECRET};UseDevelopmentEmulator=true;"
        )
    )
    await bus.close()
