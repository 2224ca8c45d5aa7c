"""`crmsync run webhooks --workers N`: several receiver processes on one port, every accepted
delivery durable in JetStream exactly once (the Nats-Msg-Id de-duplicates redeliveries that
land on another process)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from processes import CRMSYNC, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
ENVELOPE = Path(__file__).parent.parent / "fixtures" / "webhooks" / "gmail-push-envelope.json"


def gmail_push(message_id: str) -> dict[str, Any]:
    envelope: dict[str, Any] = json.loads(ENVELOPE.read_bytes())
    envelope["message"]["messageId"] = message_id
    envelope["message"]["data"] = base64.b64encode(json.dumps(
        {"emailAddress": "user@example.com", "historyId": "1234567890"}).encode()).decode()
    return envelope


def stored_ids(url: str, stream: str) -> list[str]:
    """Nats-Msg-Id of every message in the stream; the stream is deleted afterwards."""
    async def read() -> list[str]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            info = await js.stream_info(stream)
            found = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(stream, seq)
                assert msg.headers is not None
                found.append(msg.headers["Nats-Msg-Id"])
            await js.delete_stream(stream)
            return found
        finally:
            await nc.close()

    return asyncio.run(read())


def test_two_receiver_processes_store_each_delivery_once(nats_url: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:12]
    stream, port = f"W_{tag}", free_port()
    env = {**os.environ, "CRMSYNC_NATS_URL": nats_url, "CRMSYNC_NATS_STREAM": stream,
           "CRMSYNC_NATS_SUBJECT_PREFIX": f"w{tag}.webhooks",
           "CRMSYNC_GMAIL_PUSH_AUTH": "off"}  # the pushes carry no OIDC token
    proc = subprocess.Popen([*CRMSYNC, "--db", str(tmp_path / "c.db"), "run", "webhooks",
                             "--port", str(port), "--workers", "2"], env=env,
                            stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    first = client.post("/webhooks/gmail", json=gmail_push("m-0"))
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the receivers never answered"
                    time.sleep(0.2)
            answers = [first] + [client.post("/webhooks/gmail", json=gmail_push(f"m-{i}"))
                                 for i in range(1, 40)]
            # redeliveries, on fresh connections (so possibly the other process)
            for i in range(10):
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as again:
                    answers.append(again.post("/webhooks/gmail", json=gmail_push(f"m-{i}")))
        assert all(a.status_code == 202 for a in answers), [a.text for a in answers[:3]]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert sorted(stored_ids(nats_url, stream)) == sorted(f"gmail:m-{i}" for i in range(40))


def test_several_receivers_need_jetstream(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CRMSYNC_NATS_URL"}
    done = subprocess.run([*CRMSYNC, "--db", str(tmp_path / "c.db"), "run", "webhooks",
                           "--workers", "2"], check=False, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert "needs CRMSYNC_NATS_URL" in done.stderr
