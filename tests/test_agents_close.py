"""The HTTP app's cleanup closes whichever authenticator the config chose
(gateway/http/app.py); each one must be closable, or the cleanup raises and
the authoriser after it is never closed."""
import asyncio

import pytest

from gateway.config import AgentSettings
from gateway.links import agents


@pytest.mark.parametrize("auth", ["none", "trusted-header"])
def test_authenticator_closes(auth: str) -> None:
    authenticator = agents.build(AgentSettings(auth=auth), agents.Proxies(["127.0.0.1/32"]),
                                 "http://127.0.0.1:8025", {})
    asyncio.run(authenticator.close())
