"""Config reloads: from the watched file (including a ConfigMap's symlink swap) and from a push;
atomic for requests in flight; an invalid config never replaces a good one."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from packgate_sidecar.reload import FileWatcher

from tests.support.gateway import RunningGateway, make_config, running_gateway
from tests.support.policies import BlockWordPolicy, registry_with
from tests.support.upstream import Behavior, FakeUpstream

CHAT = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as running:
        yield running


async def readyz(gateway: RunningGateway) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(gateway.admin_url + "/readyz") as response,
    ):
        return response.status, await response.json()


async def metrics_text(gateway: RunningGateway) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(gateway.admin_url + "/metrics") as response,
    ):
        return await response.text()


def write(path: Path, config: dict[str, Any] | str) -> None:
    text = config if isinstance(config, str) else yaml.safe_dump(config)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    temporary.replace(path)


async def test_file_changes_apply_and_invalid_ones_keep_the_last_good_config(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    path = tmp_path / "policy-config.yaml"
    write(path, make_config(upstream.base_url, chain=["content-filter"]))
    registry = registry_with(content_filter=BlockWordPolicy)
    async with running_gateway(None, registry) as gateway:
        watcher = FileWatcher(path, gateway.holder)
        assert watcher.check() is not None and gateway.holder.current is not None
        first_hash = gateway.holder.current.hash
        client = gateway.client()
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "forbidden"}]
            )

        write(path, "pack: {name: broken\n")
        result = watcher.check()
        assert result is not None and not result.ok
        assert gateway.holder.current.hash == first_hash
        status, detail = await readyz(gateway)
        assert status == 200 and detail["config_hash"] == first_hash
        assert "YAML syntax error" in detail["last_error"]["issues"][0]["message"]
        with pytest.raises(openai.PermissionDeniedError):  # still enforced
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "forbidden"}]
            )
        assert watcher.check() is None  # the same bad content is reported once

        write(path, make_config(upstream.base_url, chain=[]))
        result = watcher.check()
        assert result is not None and result.ok and result.changed
        completion = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "forbidden"}]
        )
        assert completion.choices[0].message.content == "echo: forbidden"
        status, detail = await readyz(gateway)
        assert detail["config_hash"] != first_hash and detail["last_error"] is None
        text = await metrics_text(gateway)
        assert 'packgate_config_reloads_total{result="failure",source="file"} 1.0' in text
        assert 'packgate_config_reloads_total{result="success",source="file"} 2.0' in text
        assert f'packgate_config_info{{hash="{detail["config_hash"]}"' in text
        assert first_hash not in text


async def test_a_configmap_symlink_swap_is_picked_up_by_the_running_watcher(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """The kubelet's layout: config.yaml -> ..data/config.yaml, ..data -> ..<timestamp>/."""

    def publish(version: str, config: dict[str, Any]) -> None:
        directory = tmp_path / f"..{version}"
        directory.mkdir()
        (directory / "config.yaml").write_text(yaml.safe_dump(config))
        (tmp_path / "..data_tmp").symlink_to(directory.name)
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")

    publish("2024_01_01", make_config(upstream.base_url, name="first"))
    (tmp_path / "config.yaml").symlink_to("..data/config.yaml")
    async with running_gateway(None) as gateway:
        watcher = FileWatcher(tmp_path / "config.yaml", gateway.holder, interval=0.05)
        watcher.check()
        task = asyncio.create_task(watcher.run())
        try:
            assert gateway.holder.current is not None
            assert gateway.holder.current.config.pack.name == "first"
            publish("2024_01_02", make_config(upstream.base_url, name="second"))
            for _ in range(100):
                if gateway.holder.current.config.pack.name == "second":
                    break
                await asyncio.sleep(0.02)
            assert gateway.holder.current.config.pack.name == "second"
        finally:
            task.cancel()


async def test_requests_in_flight_finish_on_the_config_they_started_with(
    upstream: FakeUpstream,
) -> None:
    upstream.then(Behavior(delay=0.5, text="a forbidden answer"))
    blocking = make_config(upstream.base_url, chain=["content-filter"])
    registry = registry_with(content_filter=BlockWordPolicy)
    async with running_gateway(blocking, registry) as gateway:
        client = gateway.client()
        slow = asyncio.create_task(client.chat.completions.create(model="m", messages=CHAT))
        await upstream.wait_received()
        assert gateway.holder.apply(make_config(upstream.base_url)).changed
        upstream.then(Behavior(text="a forbidden answer"))
        fresh = await client.chat.completions.create(model="m", messages=CHAT)
        assert fresh.choices[0].message.content == "a forbidden answer"  # new config: no filter
        with pytest.raises(openai.PermissionDeniedError):
            await slow  # started under the filtering config, so its answer is still checked


async def test_push_apply_accepts_text_or_a_mapping_and_reports_problems(
    upstream: FakeUpstream,
) -> None:
    async with running_gateway(make_config(upstream.base_url)) as gateway:
        holder = gateway.holder
        before = holder.current
        assert before is not None
        result = holder.apply({**make_config(upstream.base_url), "extra": 1})
        assert not result.ok and result.issues[0].path == "extra"
        assert result.issues[0].message.startswith("unknown key")
        assert holder.current is before

        result = holder.apply(yaml.safe_dump(make_config(upstream.base_url, name="pushed")))
        assert result.ok and result.changed
        assert holder.current.config.pack.name == "pushed"
        again = holder.apply(yaml.safe_dump(make_config(upstream.base_url, name="pushed")))
        assert again.ok and not again.changed
        assert (
            gateway.metric("packgate_config_reloads_total", source="push", result="unchanged") == 1
        )


async def test_a_missing_provider_key_is_a_config_error(upstream: FakeUpstream) -> None:
    config = make_config(upstream.base_url)
    config["providers"]["targets"][0]["secret_key_ref"] = {"env": "NOT_SET_ANYWHERE"}
    async with running_gateway(config) as gateway:
        status, detail = await readyz(gateway)
        assert status == 503
        issue = detail["last_error"]["issues"][0]
        assert issue["path"] == "providers.targets[0].secret_key_ref"
        assert "NOT_SET_ANYWHERE" in issue["message"]
        with pytest.raises(openai.InternalServerError) as raised:
            await gateway.client().chat.completions.create(model="m", messages=CHAT)
        assert "NOT_SET_ANYWHERE" in str(raised.value)


async def test_a_chain_naming_an_unimplemented_policy_is_not_ready(
    upstream: FakeUpstream,
) -> None:
    config = make_config(upstream.base_url, chain=["prompt-injection"])
    async with running_gateway(config) as gateway:
        status, detail = await readyz(gateway)
        assert status == 503 and detail["ready"] is False
        assert "prompt-injection" in detail["last_error"]["issues"][0]["message"]
        with pytest.raises(openai.InternalServerError) as raised:
            await gateway.client().chat.completions.create(model="m", messages=CHAT)
        assert raised.value.status_code == 503
    assert upstream.received == []
