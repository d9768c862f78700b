"""The dispatcher claims no more than it can record, against a real receiver."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from conftest import wait_for

from store.records import AttemptOutcome, DeliveryRecord, NewDelivery
from store.sqlite import SqliteStore
from webhooks import ids
from webhooks.config import DeliveryConfig
from webhooks.dispatcher import Dispatcher
from webhooks.signing import HmacSigner, Signer
from webhooks.timefmt import utc_now


class SlowRecordingStore(SqliteStore):
    """Records outcomes 0.2 s late and counts leases not yet ended."""

    held = 0
    max_held = 0

    async def claim_due_deliveries(self, **kwargs: Any) -> list[DeliveryRecord]:
        claimed = await super().claim_due_deliveries(**kwargs)
        self.held += len(claimed)
        self.max_held = max(self.max_held, self.held)
        return claimed

    async def record_outcomes(
        self, owner: str, outcomes: Sequence[AttemptOutcome], **kwargs: Any
    ) -> None:
        await asyncio.sleep(0.2)
        await super().record_outcomes(owner, outcomes, **kwargs)
        self.held -= len(outcomes)


async def test_slow_recording_holds_back_claims(
    tmp_path: Path, aiohttp_server: Any
) -> None:
    async def accept(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hooks", accept)
    receiver = await aiohttp_server(app)
    url = str(receiver.make_url("/hooks"))
    store = await SlowRecordingStore.open(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    async with store.transaction() as transaction:
        await transaction.insert_deliveries(
            [
                NewDelivery(
                    id=ids.delivery_id(),
                    message_id=ids.message_id(),
                    client_id=None,
                    correlation_id=ids.correlation_id(),
                    event_type="score.requested",
                    url=url,
                    host=f"{receiver.host}:{receiver.port}",
                    payload=b"{}",
                    next_attempt_at=utc_now(),
                )
                for _ in range(40)
            ]
        )
    signers: list[Signer] = [HmacSigner(b"k" * 32)]

    async def signers_for(delivery: DeliveryRecord) -> list[Signer]:
        return signers

    config = DeliveryConfig(
        max_in_flight=4, max_in_flight_per_host=4, poll_interval_s=0.05
    )
    async with aiohttp.ClientSession() as session:
        dispatcher = Dispatcher(store, session, config, signers_for)
        await dispatcher.start()
        try:
            await wait_for(lambda: store.held == 0 and store.max_held > 0, 30)
            await wait_for(_all_delivered(store), 30)
        finally:
            await dispatcher.stop()
            await store.close()

    assert store.max_held <= 4


def _all_delivered(store: SqliteStore) -> Any:
    async def check() -> bool:
        counts = await store._all(
            "SELECT status, COUNT(*) AS n FROM deliveries GROUP BY status"
        )
        return {row["status"]: row["n"] for row in counts} == {"delivered": 40}

    return check
