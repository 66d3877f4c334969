"""What the endpoint does: opens accounts and moves money through commands, answers from their feedback,
stores every BalanceChanged as a transaction and pushes it to the matching subscribers."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from command_handler.adapters.schema_registry import SchemaRegistry
from open_bank_endpoint.config import EndpointSettings
from open_bank_endpoint.errors import NotReady
from open_bank_endpoint.kafka import AccountAnswer, Answers, Commands, Event, TransferAnswer
from open_bank_endpoint.passwords import check_password, hash_password
from open_bank_endpoint.store import Change, Store, make_engine, upgrade

log = logging.getLogger(__name__)

INCORRECT_PASSWORD = "incorrect password"
STREAM_BUFFER = 10_000  # transactions kept for a subscriber that reads slower than they come


@dataclass(frozen=True)
class StreamFilter:
    """The optional filters of stream_transactions, as the reference applies them: ``min_amount`` and
    ``max_amount`` bound the signed change in cents (a debit is negative), ``descr_includes`` ignores case."""

    iban: str | None = None
    min_amount: int | None = None
    max_amount: int | None = None
    direction: str | None = None
    descr_includes: str | None = None

    def matches(self, row: dict[str, Any], cents: int) -> bool:
        return (
            (self.iban is None or row["iban"] == self.iban)
            and (self.min_amount is None or self.min_amount <= cents)
            and (self.max_amount is None or self.max_amount >= cents)
            and (self.direction is None or row["direction"] == self.direction)
            and (self.descr_includes is None or self.descr_includes.lower() in row["descr"].lower())
        )


@dataclass
class Hub:
    """Waiters for answers and subscribers of transactions; used on the event loop only."""

    accounts: dict[uuid.UUID, list[asyncio.Future[AccountAnswer | str]]] = field(default_factory=dict)
    transfers: dict[uuid.UUID, list[asyncio.Future[TransferAnswer | str]]] = field(default_factory=dict)
    streams: dict[int, tuple[StreamFilter, asyncio.Queue[dict[str, Any]]]] = field(default_factory=dict)
    next_stream: int = 0

    def publish(self, items: list[tuple[Event, dict[str, Any] | None]]) -> None:
        for event, row in items:
            if isinstance(event, AccountAnswer):
                self._answer(self.accounts, event.command_id, event)
            elif isinstance(event, TransferAnswer):
                self._answer(self.transfers, event.command_id, event)
            elif row is not None:
                for stream_filter, queue in self.streams.values():
                    if stream_filter.matches(row, event.changed_by):
                        if queue.full():
                            log.warning("a transaction subscriber reads too slowly: a transaction was dropped")
                        else:
                            queue.put_nowait(row)

    @staticmethod
    def _answer(waiting: dict[uuid.UUID, list[asyncio.Future[Any]]], command_id: uuid.UUID, answer: object) -> None:
        for future in waiting.get(command_id, []):
            if not future.done():
                future.set_result(answer)


class Bank:
    def __init__(self, settings: EndpointSettings, migrate: bool = True) -> None:
        self.settings = settings
        self.migrate = migrate
        self.hub = Hub()
        self.store: Store | None = None
        self.commands: Commands | None = None
        self.answers: Answers | None = None
        self.waiting_for = "start-up"
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._starter: threading.Thread | None = None

    # -- life -------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Connect to the database, Kafka and the registry in the background, each waited for until it answers."""
        self.loop = loop
        self._starter = threading.Thread(target=self._connect, name="endpoint-start", daemon=True)
        self._starter.start()

    def _until(self, what: str, attempt: Callable[[], Any]) -> Any:
        delay = 0.2
        while not self._stop.is_set():
            self.waiting_for = what
            try:
                return attempt()
            except Exception as err:
                reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                log.warning("waiting for %s: %s", what, reason)
                self.waiting_for = f"{what}: {reason}"
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
        raise NotReady("stopping")

    def _connect(self) -> None:
        db = self.settings.database
        try:
            # the consumer's thread alone writes: one connection, not tried before each batch
            store = Store(make_engine(db), writer=make_engine(db, pool_size=1, pre_ping=False, role="writer"))
            self._until(f"database {db.display()}", store.ping)
            if self.migrate:
                self._until("database migration", lambda: upgrade(db))
            self.store = store
            registry = SchemaRegistry(self.settings.handler.registry)
            self._until(f"registry {registry.url}", registry.client.get_subjects)
            self.commands = self._until("the command subjects", lambda: Commands(self.settings, registry))
            self.answers = self._until("the feedback topics", lambda: Answers(self.settings, registry, self._handle))
        except NotReady:
            return
        self.waiting_for = ""
        log.info(
            "ready: commands to %s, answers from %s, %s, %s",
            self.settings.handler.topics.commands,
            self.answers.acf,
            self.answers.mtf,
            self.answers.bc,
        )

    def stop(self) -> None:
        self._stop.set()
        if self._starter is not None:
            self._starter.join(10)
        if self.answers is not None:
            self.answers.close()
        if self.commands is not None:
            self.commands.close()
        if self.store is not None:
            self.store.dispose()

    def health(self) -> dict[str, Any]:
        consumer = "stopped" if self.answers is not None and not self.answers.alive else None
        failure = self.answers.failure if self.answers is not None else None
        waiting = self.waiting_for or consumer or failure or ""
        return {"live": consumer is None, "ready": not waiting, "waiting_for": waiting or None}

    def _handle(self, events: list[Event]) -> None:
        """On the consumer's thread: store the changes, drop the accounts whose creation failed, then publish."""
        assert self.store is not None and self.loop is not None
        # the removals first: a batch retried after its rows went in would store and stream them twice
        for event in events:
            if isinstance(event, AccountAnswer) and event.reason is not None:
                self.store.remove_account(event.command_id)
        rows = iter(self.store.add_changes([e for e in events if isinstance(e, Change)]))
        items = [(e, next(rows) if isinstance(e, Change) else None) for e in events]
        self.loop.call_soon_threadsafe(self.hub.publish, items)

    # -- what the schema's fields do ------------------------------------------------------

    def _ready_store(self) -> Store:
        if self.store is None:
            raise NotReady(f"the endpoint is not ready, waiting for {self.waiting_for}")
        return self.store

    def _ready_commands(self) -> Commands:
        if self.commands is None or self.answers is None:
            raise NotReady(f"the endpoint is not ready, waiting for {self.waiting_for}")
        return self.commands

    async def transaction(self, transaction_id: int) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._ready_store().transaction, transaction_id)

    async def transactions_by_iban(self, iban: str, max_items: int) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._ready_store().by_iban, iban, max_items)

    async def all_last_transactions(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._ready_store().all_last)

    async def stream(self, stream_filter: StreamFilter) -> AsyncIterator[dict[str, Any]]:
        self._ready_store()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(STREAM_BUFFER)
        self.hub.next_stream += 1
        key = self.hub.next_stream
        self.hub.streams[key] = (stream_filter, queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self.hub.streams.pop(key, None)

    async def _ask(
        self,
        waiting: dict[uuid.UUID, list[asyncio.Future[Any]]],
        command_id: uuid.UUID,
        send: Callable[[Callable[[str], None]], None],
    ) -> Any:
        """Send a command and wait for the answer with its id: the answer, or a reason (str) why there is none."""
        assert self.loop is not None
        loop = self.loop
        future: asyncio.Future[Any] = loop.create_future()
        waiting.setdefault(command_id, []).append(future)

        def settle(reason: str) -> None:
            if not future.done():
                future.set_result(reason)

        def failed(reason: str) -> None:  # from the producer's thread, or this one
            loop.call_soon_threadsafe(settle, reason)

        try:
            send(failed)
            return await asyncio.wait_for(future, self.settings.answer_timeout_s)
        except TimeoutError:
            return f"no answer from the bank within {self.settings.answer_timeout_s:.0f} s, try again"
        finally:
            futures = waiting.get(command_id, [])
            if future in futures:
                futures.remove(future)
            if not futures:
                waiting.pop(command_id, None)

    async def get_account(self, username: str, password: str) -> dict[str, Any]:
        store = self._ready_store()
        commands = self._ready_commands()
        account = await asyncio.to_thread(store.account, username)
        if account is not None:
            if not await asyncio.to_thread(check_password, password, account.password):
                return {"iban": None, "token": None, "reason": INCORRECT_PASSWORD}
            command_id = account.uuid
        else:
            command_id = uuid.uuid4()
            hashed = await asyncio.to_thread(hash_password, password, self.settings.pbkdf2_iterations)
            if not await asyncio.to_thread(store.add_account, username, hashed, command_id):
                found = await asyncio.to_thread(store.account, username)  # taken meanwhile
                if found is None or not await asyncio.to_thread(check_password, password, found.password):
                    return {"iban": None, "token": None, "reason": INCORRECT_PASSWORD}
                command_id = found.uuid
        answer = await self._ask(
            self.hub.accounts, command_id, lambda failed: commands.account_creation(command_id, username, failed)
        )
        if isinstance(answer, str):
            return {"iban": None, "token": None, "reason": answer}
        return {"iban": answer.iban, "token": answer.token, "reason": answer.reason}

    async def money_transfer(
        self, uuid_arg: str, username: str, token: str, amount: int, from_: str, to: str, descr: str
    ) -> dict[str, Any]:
        commands = self._ready_commands()
        try:
            command_id = uuid.UUID(uuid_arg)
        except ValueError:
            return {"uuid": uuid_arg, "success": False, "reason": "uuid is not a valid UUID"}
        answer = await self._ask(
            self.hub.transfers,
            command_id,
            lambda failed: commands.money_transfer(command_id, username, token, amount, from_, to, descr, failed),
        )
        if isinstance(answer, str):
            return {"uuid": str(command_id), "success": False, "reason": answer}
        return {"uuid": str(command_id), "success": answer.reason is None, "reason": answer.reason}
