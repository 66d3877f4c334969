"""The command service against a real Postgres: the contract's behaviour, replays, atomicity, concurrency."""

import threading
from collections.abc import Iterator
from uuid import uuid4

import pytest
from sqlalchemy import Engine, create_engine, text

from command_handler.adapters import migrations
from command_handler.adapters.unit_of_work import SqlAlchemyUnitOfWork
from command_handler.config import Settings
from command_handler.domain import rules
from command_handler.domain.iban import BANK_IBAN, new_iban
from command_handler.domain.model import (
    AccountCreationConfirmed,
    AccountCreationFailed,
    BalanceChanged,
    ConfirmAccountCreation,
    ConfirmMoneyTransfer,
    MoneyTransferConfirmed,
    MoneyTransferFailed,
    Outcome,
    Source,
)
from command_handler.service_layer.commands import CommandService

pytestmark = pytest.mark.integration

BANK_SEED = 100000000000000000


@pytest.fixture
def engine(scratch_db: Settings) -> Iterator[Engine]:
    migrations.upgrade(scratch_db.database.url())
    engine = create_engine(scratch_db.database.url(), pool_size=8)
    yield engine
    engine.dispose()


@pytest.fixture
def service(engine: Engine) -> CommandService:
    return CommandService(lambda: SqlAlchemyUnitOfWork(engine))


def open_account(service: CommandService, username: str = "alice") -> AccountCreationConfirmed:
    (outcome,) = service.handle([ConfirmAccountCreation(uuid4(), username)])
    assert isinstance(outcome.feedback, AccountCreationConfirmed)
    return outcome.feedback


def balance(engine: Engine, iban: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT amount FROM balance WHERE iban = :i"), {"i": iban}).scalar_one())


def total(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT sum(amount) FROM balance")).scalar_one())


def test_account_creation_stores_account_and_answer(service: CommandService, engine: Engine) -> None:
    cmd = ConfirmAccountCreation(uuid4(), "alice")
    (outcome,) = service.handle([cmd])
    confirmed = outcome.feedback
    assert isinstance(confirmed, AccountCreationConfirmed)
    assert confirmed.id == cmd.id and len(confirmed.token) == 20
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT username, token, amount, lmt FROM balance WHERE iban = :i"), {"i": confirmed.iban}
        ).one()
        assert tuple(row) == ("alice", confirmed.token, 0, -50000)
        cac = conn.execute(text("SELECT username, iban, token, reason FROM cac WHERE uuid = :u"), {"u": cmd.id}).one()
        assert tuple(cac) == ("alice", confirmed.iban, confirmed.token, None)


def test_account_creation_replay_answers_the_same_and_changes_nothing(service: CommandService, engine: Engine) -> None:
    cmd = ConfirmAccountCreation(uuid4(), "alice")
    first = service.handle([cmd])
    with engine.connect() as conn:
        accounts = conn.execute(text("SELECT count(*) FROM balance")).scalar_one()
    again = service.handle([cmd])
    assert again == first
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM balance")).scalar_one() == accounts


def test_iban_collisions_try_fresh_ibans_then_fail(engine: Engine) -> None:
    fresh = new_iban()
    candidates = iter([BANK_IBAN, BANK_IBAN, fresh])
    service = CommandService(lambda: SqlAlchemyUnitOfWork(engine), iban_source=lambda: next(candidates))
    assert open_account(service).iban == fresh

    always_taken = CommandService(lambda: SqlAlchemyUnitOfWork(engine), iban_source=lambda: BANK_IBAN)
    cmd = ConfirmAccountCreation(uuid4(), "bob")
    (outcome,) = always_taken.handle([cmd])
    assert outcome.feedback == AccountCreationFailed(cmd.id, "generated iban already exists, try again")
    (replayed,) = service.handle([cmd])  # the failure is stored and replayed, not retried
    assert replayed == outcome


def test_empty_username_fails_with_a_reason(service: CommandService) -> None:
    cmd = ConfirmAccountCreation(uuid4(), "")
    (outcome,) = service.handle([cmd])
    assert outcome.feedback == AccountCreationFailed(cmd.id, rules.USERNAME_EMPTY)


@pytest.mark.parametrize("username", ["nul\x00user", "u" * 300_000])
def test_a_refused_username_postgres_cannot_store_is_answered_and_its_replay_too(
    service: CommandService, engine: Engine, username: str
) -> None:
    """Found by the fuzz corpus: the refused username was stored as sent, and a NUL made the driver refuse
    the batch, which was retried for ever. Kept storable now, and answered the same on a replay."""
    cmd = ConfirmAccountCreation(uuid4(), username)
    (outcome,) = service.handle([cmd])
    assert isinstance(outcome.feedback, AccountCreationFailed) and outcome.feedback.reason.startswith("username")
    assert service.handle([cmd]) == [outcome]
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT username FROM cac WHERE uuid = :u"), {"u": cmd.id}).scalar_one()
    assert "\x00" not in stored and len(stored) <= rules.MAX_LENGTHS["description"]


def test_deposit_transfer_and_events(service: CommandService, engine: Engine) -> None:
    alice = open_account(service, "alice")
    bob = open_account(service, "bob")
    deposit = ConfirmMoneyTransfer(uuid4(), "ignored", 2000, "cash", alice.iban, "deposit")
    pay = ConfirmMoneyTransfer(uuid4(), alice.token, 500, alice.iban, bob.iban, "lunch")
    to_bank = ConfirmMoneyTransfer(uuid4(), bob.token, 100, bob.iban, BANK_IBAN, "fee")
    outcomes = service.handle([deposit, pay, to_bank])
    assert [o.feedback for o in outcomes] == [MoneyTransferConfirmed(c.id) for c in (deposit, pay, to_bank)]
    assert outcomes[0].events == (BalanceChanged("alice", alice.iban, 2000, 2000, "cash", "deposit"),)
    assert outcomes[1].events == (
        BalanceChanged("alice", alice.iban, 1500, -500, bob.iban, "lunch"),
        BalanceChanged("bob", bob.iban, 500, 500, alice.iban, "lunch"),
    )
    assert outcomes[2].events == (
        BalanceChanged("bob", bob.iban, 400, -100, BANK_IBAN, "fee"),
        BalanceChanged("open_web", BANK_IBAN, BANK_SEED + 100, 100, bob.iban, "fee"),
    )
    assert (balance(engine, alice.iban), balance(engine, bob.iban)) == (1500, 400)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda a, b: ConfirmMoneyTransfer(uuid4(), a.token, 1, "NL00OPEN0000000000", b.iban, "d"), rules.FROM_INVALID),
        (lambda a, b: ConfirmMoneyTransfer(uuid4(), a.token, 1, a.iban, a.iban, "d"), rules.SAME_ACCOUNTS),
        (lambda a, b: ConfirmMoneyTransfer(uuid4(), "0" * 20, 1, a.iban, b.iban, "d"), rules.INVALID_TOKEN),
        (lambda a, b: ConfirmMoneyTransfer(uuid4(), a.token, 50_001, a.iban, b.iban, "d"), rules.INSUFFICIENT_FUNDS),
        (lambda a, b: ConfirmMoneyTransfer(uuid4(), a.token, 1, "cash", "NL35OPEN0999999999", "d"), rules.BOTH_UNKNOWN),
        (lambda a, b: ConfirmMoneyTransfer(uuid4(), a.token, 0, a.iban, b.iban, "d"), rules.AMOUNT_NOT_POSITIVE),
        (lambda a, b: ConfirmMoneyTransfer(uuid4(), a.token, -100, a.iban, b.iban, "d"), rules.AMOUNT_NOT_POSITIVE),
    ],
)
def test_failed_transfers_change_nothing_and_are_stored(service: CommandService, engine: Engine, make, reason) -> None:  # type: ignore[no-untyped-def]
    a, b = open_account(service, "a"), open_account(service, "b")
    before = total(engine)
    cmd = make(a, b)
    (outcome,) = service.handle([cmd])
    assert outcome.feedback == MoneyTransferFailed(cmd.id, reason)
    assert outcome.events == ()
    assert total(engine) == before
    with engine.connect() as conn:
        assert conn.execute(text("SELECT reason FROM cmt WHERE uuid = :u"), {"u": cmd.id}).scalar_one() == reason


def test_transfer_replays_are_answered_from_the_stored_outcome_and_change_nothing(
    service: CommandService, engine: Engine
) -> None:
    alice, bob = open_account(service, "alice"), open_account(service, "bob")
    cmd = ConfirmMoneyTransfer(uuid4(), alice.token, 700, alice.iban, bob.iban, "once")
    record = Source("commands", 5, 1234)
    first = service.handle([cmd], [record])
    assert len(first[0].events) == 2
    # the same record redelivered: feedback and events again, as stored
    assert service.handle([cmd], [Source("commands", 5, 1234)]) == first
    # new records with the same id (a client's retry), also twice in one batch: the feedback only
    retry = [Source("commands", 5, 1300), Source("commands", 9, 1234)]
    assert service.handle([cmd, cmd], retry) == [Outcome(first[0].feedback)] * 2
    assert (balance(engine, alice.iban), balance(engine, bob.iban)) == (-700, 700)


def test_a_failed_batch_changes_nothing(engine: Engine, service: CommandService) -> None:
    """Atomicity: when the transaction fails half-way, no claim, balance or outcome remains."""
    alice = open_account(service, "alice")
    deposit = ConfirmMoneyTransfer(uuid4(), "", 100, "cash", alice.iban, "d")

    class Boom(Exception):
        pass

    class FailingUoW(SqlAlchemyUnitOfWork):
        def __exit__(self, exc_type, exc, tb):  # type: ignore[no-untyped-def]
            return super().__exit__(Boom, Boom(), None)  # roll back as if the process died before commit

    failing = CommandService(lambda: FailingUoW(engine))
    failing.handle([deposit])
    assert balance(engine, alice.iban) == 0
    (outcome,) = service.handle([deposit])  # handled for real, once
    assert outcome.events[0].new_balance == 100
    assert balance(engine, alice.iban) == 100


def test_concurrent_opposite_transfers_never_deadlock_or_lose_updates(engine: Engine, service: CommandService) -> None:
    alice, bob = open_account(service, "alice"), open_account(service, "bob")
    service.handle([ConfirmMoneyTransfer(uuid4(), "", 100_000, "cash", i, "seed") for i in (alice.iban, bob.iban)])
    errors: list[BaseException] = []
    outcomes: list[object] = []
    conflicts: list[int] = []  # deadlocks are retried: counted here, so that one cannot pass unseen

    def worker(frm: AccountCreationConfirmed, to: AccountCreationConfirmed) -> None:
        own = CommandService(lambda: SqlAlchemyUnitOfWork(engine), on_conflict=lambda: conflicts.append(1))
        try:
            for _ in range(30):
                batch = [ConfirmMoneyTransfer(uuid4(), frm.token, 7, frm.iban, to.iban, "x") for _ in range(3)]
                outcomes.extend(own.handle(batch))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=worker, args=pair) for pair in [(alice, bob), (bob, alice)] * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert not conflicts, f"{len(conflicts)} deadlocks or serialization failures: the lock order is broken"
    assert len(outcomes) == 4 * 30 * 3
    assert all(isinstance(o.feedback, MoneyTransferConfirmed) for o in outcomes)  # type: ignore[attr-defined]
    assert balance(engine, alice.iban) + balance(engine, bob.iban) == 200_000
    assert balance(engine, alice.iban) == 100_000  # symmetric traffic


def test_the_same_command_in_two_concurrent_handlers_is_applied_once(engine: Engine, service: CommandService) -> None:
    alice = open_account(service, "alice")
    commands = [ConfirmMoneyTransfer(uuid4(), "", 10, "cash", alice.iban, f"d{i}") for i in range(50)]
    results: dict[int, list[object]] = {}

    def run(n: int) -> None:  # the same records reach every handler, as across a rebalance
        own = CommandService(lambda: SqlAlchemyUnitOfWork(engine))
        results[n] = [o for i, c in enumerate(commands) for o in own.handle([c], [Source("commands", 0, i)])]

    threads = [threading.Thread(target=run, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert balance(engine, alice.iban) == 500
    # every handler answers identically, and sends the same events (a redelivery's with the balance of its time)
    feedback = [[o.feedback for o in results[n]] for n in range(3)]  # type: ignore[attr-defined]
    assert feedback[0] == feedback[1] == feedback[2]
    changes = [[(e.changed_by, e.description) for o in results[n] for e in o.events] for n in range(3)]  # type: ignore[attr-defined]
    assert changes[0] == changes[1] == changes[2] == [(10, f"d{i}") for i in range(50)]
