"""A probe through the GraphQL endpoint, for what the endpoint adds to the Kafka-level latency test: run it
beside ``command-handler latency`` (same stack, same load) and compare its p50 with the probe's there.

Every ``interval_s`` it deposits 1 cent with ``money_transfer`` over the endpoint's WebSocket and measures
until the ``stream_transactions`` row of that deposit arrives (the Kafka-level probe: until its BalanceChanged
arrives), and until the feedback arrives."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from open_bank_devtools.loadtest.browser import ACCOUNT, TRANSFER
from open_bank_devtools.loadtest.report import percentile


async def probe(ws_url: str, seconds: float, interval_s: float = 0.2) -> dict[str, Any]:
    import websockets

    name = f"probe-{uuid.uuid4().hex[:8]}"
    async with websockets.connect(ws_url, subprotocols=["graphql-ws"]) as ws:  # type: ignore[list-item]

        async def start(op: str, query: str, variables: dict[str, Any]) -> None:
            await ws.send(json.dumps({"id": op, "type": "start", "payload": {"query": query, "variables": variables}}))

        await start("account", ACCOUNT, {"username": name, "password": name})
        while True:
            message = json.loads(await ws.recv())
            if message.get("id") == "account" and message["type"] == "data":
                iban = message["payload"]["data"]["get_account"]["iban"]
                break
        await start("stream", "subscription ($iban: String) {stream_transactions(iban: $iban) {descr}}", {"iban": iban})
        await asyncio.sleep(0.5)
        rows: list[float] = []
        answers: list[float] = []
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            n += 1
            began = time.monotonic()
            variables = {"amount": 1, "uuid": str(uuid.uuid4()), "username": name, "token": "cash"}
            await start(f"t{n}", TRANSFER, {**variables, "from": "cash", "to": iban, "descr": f"probe {n}"})
            got = 0
            while got < 2 and time.monotonic() - began < 5:
                message = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if message["type"] != "data":
                    continue
                if (
                    message["id"] == "stream"
                    and message["payload"]["data"]["stream_transactions"]["descr"] == f"probe {n}"
                ):
                    rows.append((time.monotonic() - began) * 1000)
                    got += 1
                elif message["id"] == f"t{n}":
                    answers.append((time.monotonic() - began) * 1000)
                    got += 1
            await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - began)))
    return {
        "samples": len(rows),
        "row_p50_ms": percentile(rows, 50) if rows else None,
        "row_p99_ms": percentile(rows, 99) if rows else None,
        "feedback_p50_ms": percentile(answers, 50) if answers else None,
    }


def run(ws_url: str, seconds: float) -> dict[str, Any]:
    return asyncio.run(probe(ws_url, seconds))
