"""Crashes and concurrency: kill -9 under load, and two handlers sharing duplicated commands across rebalances.

After each scenario the ledger must be exactly what applying every confirmed
command once gives: every command answered (re-sent answers identical), the sum
of all balances equal to the bank's seed plus the cash deposits, each balance
equal to its start plus confirmed credits minus confirmed debits, and a
BalanceChanged for every balance a confirmed transfer changed.
"""

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from sqlalchemy import create_engine, text

from open_bank_devtools.loadtest.bank_client import BankClient

from ..conftest import Services
from .handler_process import HandlerProcess, World, isolated_world

pytestmark = pytest.mark.integration

BANK_SEED = 100000000000000000
START = 100_000
DUP = "~dup"  # key suffix of a duplicated command


@dataclass(frozen=True)
class Sent:
    id: UUID
    key: str
    token: str
    amount: int
    frm: str
    to: str

    def resend(self, client: BankClient, key: str) -> None:
        """The same command again (same id and content) under another key, so another partition."""
        client.transfer(key, self.token, self.amount, self.frm, self.to, str(self.id), command_id=self.id)


@pytest.fixture
def world(services: Services) -> Iterator[World]:
    with isolated_world(services.env, "res" + uuid4().hex[:8]) as w:
        yield w


def open_accounts(client: BankClient, n: int) -> dict[str, dict]:
    """n accounts, each with START cents deposited from cash: iban -> {username, token}."""
    ids = {client.open_account(f"user{i}"): f"user{i}" for i in range(n)}
    accounts = {}
    for command_id, answer in client.wait_all(list(ids)).items():
        assert answer.record == "AccountCreationConfirmed"
        accounts[answer.value["iban"]] = {"username": ids[command_id], "token": answer.value["token"]}
    deposits = [client.transfer(a["username"], "", START, "cash", iban, "start") for iban, a in accounts.items()]
    assert all(a.record == "MoneyTransferConfirmed" for a in client.wait_all(deposits).values())
    return accounts


def random_commands(client: BankClient, accounts: dict[str, dict], count: int, seed: int) -> list[Sent]:
    rng = random.Random(seed)
    ibans = sorted(accounts)
    sent = []
    for _ in range(count):
        frm, to = rng.sample(ibans, 2)
        owner = accounts[frm]
        kind = rng.random()
        if kind < 0.1:
            frm, token = "cash", ""
        elif kind < 0.15:
            token = "1" * 20  # invalid token
        else:
            token = owner["token"]
        amount = rng.randint(1, 8000)
        command_id = uuid4()
        key = accounts[to]["username"] if frm == "cash" else owner["username"]
        client.transfer(key, token, amount, frm, to, description=str(command_id), command_id=command_id)
        sent.append(Sent(command_id, key, token, amount, frm, to))
    client.flush()
    return sent


def check_ledger(world: World, client: BankClient, accounts: dict[str, dict], sent: list[Sent]) -> Counter:
    answers = client.wait_all([s.id for s in sent], timeout_s=180)
    with client._lock:
        for s in sent:  # an answer sent again (after a crash or rebalance) is identical to the first
            copies = client.feedback[s.id]
            assert all(c.value == copies[0].value for c in copies), s
            assert {c.key for c in copies} <= {s.key.encode(), (s.key + DUP).encode()}, s
    expected = {iban: START for iban in accounts}
    deposits = START * len(accounts)
    outcome = Counter()
    for s in sent:
        answer = answers[s.id]
        outcome[answer.value.get("reason", "confirmed")] += 1
        if answer.record != "MoneyTransferConfirmed":
            continue
        if s.frm == "cash":
            deposits += s.amount
        else:
            expected[s.frm] -= s.amount
        expected[s.to] += s.amount
    engine = create_engine(world.settings.database.url())
    with engine.connect() as conn:
        actual = dict(conn.execute(text("SELECT iban, amount FROM balance WHERE iban <> 'NL66OPEN0000000000'")).all())
        total = conn.execute(text("SELECT sum(amount) FROM balance")).scalar_one()
        handled = conn.execute(text("SELECT count(*) FROM cmt")).scalar_one()
    engine.dispose()
    assert actual == expected  # every confirmed transfer applied exactly once, nothing else
    assert total == BANK_SEED + deposits  # money is conserved
    assert handled == len(sent) + len(accounts)
    # a BalanceChanged for every balance a confirmed transfer changed, and none for failed ones
    confirmed = [s for s in sent if answers[s.id].record == "MoneyTransferConfirmed"]

    def expected_events(s: Sent) -> set[tuple[str, str, int]]:
        debit = set() if s.frm == "cash" else {(str(s.id), s.frm, -s.amount)}
        return debit | {(str(s.id), s.to, s.amount)}

    deadline = time.monotonic() + 60
    while True:
        by_description = Counter()
        for iban in accounts:
            for event in client.events_for(iban):
                by_description[(event.value["description"], event.value["iban"], event.value["changed_by"])] += 1
        missing = [s for s in confirmed if not expected_events(s) <= set(by_description)]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not missing, f"{len(missing)} confirmed transfers without their BalanceChanged events"
    failed_ids = {str(s.id) for s in sent if answers[s.id].record != "MoneyTransferConfirmed"}
    assert not any(d in failed_ids for d, _, _ in by_description)
    return outcome


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f}s"
        time.sleep(0.05)


def test_kill_9_under_load_then_restart_loses_nothing_and_applies_nothing_twice(world: World, tmp_path: Path) -> None:
    first = HandlerProcess(world, tmp_path, name="first").wait_ready()
    client = BankClient(world.settings)
    try:
        accounts = open_accounts(client, 12)
        sent = random_commands(client, accounts, 3000, seed=1)
        deadline = time.monotonic() + 60
        while sum(1 for s in sent if client.feedback.get(s.id)) < 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        answered_before_kill = sum(1 for s in sent if client.feedback.get(s.id))
        first.kill()  # SIGKILL: no shutdown, no commit
        assert answered_before_kill < len(sent), "the kill came too late to test anything"
        second = HandlerProcess(world, tmp_path, name="second", sync=False).wait_ready()
        outcome = check_ledger(world, client, accounts, sent)
        assert outcome["confirmed"] > len(sent) // 2 and outcome["invalid token"] > 0
        assert second.terminate() == 0
    finally:
        client.close()


def test_two_handlers_with_duplicated_commands_across_rebalances(world: World, tmp_path: Path) -> None:
    first = HandlerProcess(world, tmp_path, name="a").wait_ready()
    client = BankClient(world.settings)
    second = None
    try:
        accounts = open_accounts(client, 10)
        sent: list[Sent] = []
        stop = threading.Event()

        def produce() -> None:  # every command twice, spread over both rebalances
            batch = 0
            while not stop.is_set() and batch < 40:
                commands = random_commands(client, accounts, 25, seed=100 + batch)
                for s in commands:  # a client's retry: the same command under another key, so another partition
                    s.resend(client, s.key + DUP)
                sent.extend(commands)
                batch += 1
                time.sleep(0.15)

        producer = threading.Thread(target=produce)
        producer.start()

        def answered_batches(n: int) -> Callable[[], bool]:  # n batches of 25 sent, and all answered
            return lambda: len(sent) >= 25 * n and all(client.feedback.get(s.id) for s in list(sent)[: 25 * n])

        wait_for(answered_batches(5), "the first handler answers under load")
        second = HandlerProcess(world, tmp_path, name="b", sync=False)  # joins: rebalance
        second.wait_until("assigned")
        first.wait_until("revoked")  # the first gave partitions up to the second while running
        done_before = len(sent) // 25
        wait_for(answered_batches(min(done_before + 5, 40)), "both handlers answer commands sent after the rebalance")
        assert first.terminate() == 0  # leaves: rebalance again, while commands keep coming
        producer.join()
        outcome = check_ledger(world, client, accounts, sent)
        assert outcome["confirmed"] > len(sent) // 3
        with client._lock:  # both copies of every command were answered, identically
            assert all(len(client.feedback[s.id]) >= 2 for s in sent)
            crossed = [s for s in sent if len({a.partition for a in client.feedback[s.id]}) > 1]
        assert len(crossed) > len(sent) // 2  # the copies really went through different partitions
    finally:
        stop.set()
        if second is not None:
            assert second.terminate() == 0
        client.close()
