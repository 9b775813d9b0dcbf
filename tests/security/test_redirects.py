"""Threat: a provider (or whoever answers at its address) redirects, and the gateway follows.

A followed 307/308 re-sends the prompt, with the provider key, to a host the config never names,
and relays that host's answer as the model's. packgate never follows a redirect: a 3xx from a
provider is a 502 `upstream_redirect`, and nothing is sent anywhere else.
"""

from __future__ import annotations

import openai
import pytest

from tests.support.gateway import make_config, running_gateway
from tests.support.upstream import Behavior, FakeUpstream


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_a_502_and_the_prompt_goes_nowhere_else(status: int) -> None:
    async with FakeUpstream() as provider, FakeUpstream() as elsewhere:
        target = elsewhere.base_url + "/chat/completions"
        provider.then(Behavior(status=status, headers={"Location": target}))
        async with running_gateway(make_config(provider.base_url)) as gateway:
            with pytest.raises(openai.APIStatusError) as caught:
                await gateway.client().chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "my secret plan"}]
                )
        assert caught.value.status_code == 502
        error = caught.value.body
        assert isinstance(error, dict)
        assert error["code"] == "upstream_redirect"
        assert str(status) in error["message"]
        assert len(provider.received) == 1
        assert elsewhere.received == [], "the redirect was followed"
