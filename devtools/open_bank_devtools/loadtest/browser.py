"""The reference's latency test in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``) driven through Selenium, against the GraphQL endpoint's page.

It logs in as ``testuser``, then each loop clicks (``click``: a mouse press and release through DevTools, or
WebDriver's element click) the next deposit button or fills and submits the transfer form (the reference's
cycle: deposits of 10, 20, 50, 100, 200 euro, transfers of 11,11, 23,23, 34,89, 99,99 and 210,78 euro to the
bank), and measures from the click until the newest transaction row of the page shows the expected amount,
watched inside the page on every change and every ``poll_ms``; ``max_interaction_ms`` is a time-out.
Background load comes from generators, one more every ``batch_cycle`` loops, each a WebSocket client of the
endpoint doing what the reference's do: open two accounts, then transfer back and forth at most every 250 ms, with an invalid token
or too large an amount now and then, checking the answers' reasons. Rows go to the same CSV as the
Kafka-level test (``load_target`` is the generators' most, 4 transfers/s each; ``balance_ms`` is
click-to-visible as the reference measures it, ``in_page_ms`` the same inside the page, without WebDriver's
own time), with the CPU and memory of the handler, endpoint, broker and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import csv
import json
import logging
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from open_bank_devtools.loadtest.latency import COLUMNS, Row, _fmt, preset_values, results_path, show_progress
from open_bank_devtools.loadtest.resources import ResourceSampler

log = logging.getLogger(__name__)

BANK_IBAN = "NL66OPEN0000000000"
DEPOSITS = ((1000, "€10,00"), (2000, "€20,00"), (5000, "€50,00"), (10000, "€100,00"), (20000, "€200,00"))
TRANSFERS = (
    ("11,11", "drinks", "€11,11"),
    ("23,23", "parking", "€23,23"),
    ("34,89", "groceries", "€34,89"),
    ("99,99", "present", "€99,99"),
    ("210,78", "fine", "€210,78"),
)
# the reference test's own selectors: the amount of the newest transaction, and the transfer form's fields
NEWEST_AMOUNT = "#transactions div:nth-child(1) div div:nth-child(1) p:nth-child(1) span:nth-child(2)"
NEWEST = """const box = document.querySelector('#transactions > div');
const amount = document.querySelector(arguments[0]);
return [box ? box.id : null, amount ? amount.textContent : null];"""
# in the page: when the last click happened and when each newest row appeared (performance.now(), ms)
WATCH = """window.__rows = {}; window.__click = null;
document.addEventListener('click', (e) => { window.__click = performance.now(); }, true);
new MutationObserver(() => {
  const box = document.querySelector('#transactions > div');
  if (box && !(box.id in window.__rows)) window.__rows[box.id] = performance.now();
}).observe(document.getElementById('transactions'), {childList: true});"""
IN_PAGE = (
    "return (arguments[0] in window.__rows && window.__click) ? window.__rows[arguments[0]] - window.__click : null;"
)
# in the page, after the click: resolves with the newest row's id once it is a new row showing the amount,
# looked at on every change of the list and every poll_ms besides; null after the time-out
WAIT_FOR_ROW = """const [before, shown, amountSelector, pollMs, timeoutMs, done] = arguments;
const list = document.getElementById('transactions');
let observer = null, poller = null, timer = null;
const finish = (id) => { observer.disconnect(); clearInterval(poller); clearTimeout(timer); done(id); };
const check = () => {
  const box = document.querySelector('#transactions > div');
  const amount = document.querySelector(amountSelector);
  if (box && box.id !== before && amount && amount.textContent === shown) finish(box.id);
};
observer = new MutationObserver(check);
observer.observe(list, {childList: true, subtree: true, characterData: true});
poller = setInterval(check, pollMs);
timer = setTimeout(() => finish(null), timeoutMs);
check();"""
GENERATOR_PERIOD_S = 0.25  # a generator's transfers start at most this often (the reference's)
TRANSFER = (
    "subscription ($amount: Int! $uuid: String! $username: String! $to: String! $token: String! $from: String! "
    "$descr: String!){money_transfer(amount: $amount uuid: $uuid username: $username to: $to token: $token "
    "from: $from descr: $descr) {reason success uuid}}"
)
ACCOUNT = (
    "subscription ($username: String! $password: String!){get_account(username: $username password: $password) "
    "{iban token reason}}"
)


CLICKS = ("devtools", "webdriver")
# the centre of an element, scrolled into view, in the viewport's CSS pixels (what Input.dispatchMouseEvent takes)
CENTER = """arguments[0].scrollIntoView({block: 'center'});
const r = arguments[0].getBoundingClientRect();
return [r.left + r.width / 2, r.top + r.height / 2];"""


@dataclass(frozen=True)
class BrowserConfig:
    name: str = "browser"
    interval_ms: int = 1000
    max_interaction_ms: int = 5000
    max_time_outs: int = 5
    max_loops: int = 1000
    min_loops: int = 100
    batch_cycle: int = 10  # loops per generator added
    generators_start: int = 0
    max_generators: int = 99
    poll_ms: int = 20
    measure_every: int = 10
    # how the click is made: "devtools", a mouse press and release through Chrome's input pipeline
    # (Input.dispatchMouseEvent, the events chromedriver sends too, without its checks around them: about
    # 8 ms to the click event against 40 ms); "webdriver", WebDriver's element click, as the reference did
    click: str = "devtools"

    def __post_init__(self) -> None:
        if self.click not in CLICKS:
            raise ValueError(f"click must be one of {', '.join(CLICKS)}, not {self.click!r}")

    @classmethod
    def load(cls, name_or_path: str) -> BrowserConfig:
        return cls(**preset_values(cls, name_or_path, "browser latency config", "browser*.toml"))

    def generators_at(self, loop: int) -> int:
        return min(self.max_generators, self.generators_start + (loop - 1) // self.batch_cycle)


def is_browser_config(name_or_path: str) -> bool:
    return Path(name_or_path).stem.startswith("browser")


# -- generators ------------------------------------------------------------------------------------------


class Generators:
    """The reference's load generators, on one asyncio loop in a thread of their own."""

    def __init__(self, ws_url: str, run_id: str) -> None:
        self.ws_url = ws_url
        self.run_id = run_id
        self.sent = 0
        self.answered = 0
        self.mismatches = 0
        self.failures: list[str] = []
        self.loop = asyncio.new_event_loop()
        self._tasks: list[concurrent.futures.Future[None]] = []
        self._thread = threading.Thread(target=self.loop.run_forever, name="generators", daemon=True)
        self._thread.start()

    @property
    def count(self) -> int:
        return len(self._tasks)

    def add(self) -> None:
        n = len(self._tasks)
        self._tasks.append(asyncio.run_coroutine_threadsafe(self._generator(n), self.loop))

    async def _generator(self, n: int) -> None:
        import websockets

        try:
            async with websockets.connect(self.ws_url, subprotocols=["graphql-ws"]) as ws:  # type: ignore[list-item]
                # as the reference's generators, no connection_init: operations start at once
                first = await self._ask(ws, ACCOUNT, self._credentials(n, "first"), "get_account")
                second = await self._ask(ws, ACCOUNT, self._credentials(n, "second"), "get_account")
                accounts = {
                    "first": (self._credentials(n, "first")["username"], first),
                    "second": (self._credentials(n, "second")["username"], second),
                }
                kind, amount = "from", 100
                while True:
                    started = time.monotonic()
                    answer = await self._ask(ws, TRANSFER, self._transfer(accounts, kind, amount), "money_transfer")
                    self._check(kind, answer)
                    kind, amount = self._next(kind, amount)
                    await asyncio.sleep(max(0.0, GENERATOR_PERIOD_S - (time.monotonic() - started)))
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self.failures.append(f"generator {n}: {type(err).__name__}: {err}")
            log.warning("generator %d stopped: %s", n, err)

    def _credentials(self, n: int, which: str) -> dict[str, str]:
        name = f"gen-{self.run_id}-{n}-{which}"
        return {"username": name, "password": name}

    async def _ask(self, ws: Any, query: str, variables: dict[str, Any], field: str) -> dict[str, Any]:
        op = uuid.uuid4().hex
        await ws.send(json.dumps({"id": op, "type": "start", "payload": {"query": query, "variables": variables}}))
        self.sent += field == "money_transfer"
        while True:
            message = json.loads(await ws.recv())
            if message.get("id") != op:
                continue
            if message["type"] == "data":
                await ws.send(json.dumps({"id": op, "type": "stop"}))
                payload = message["payload"]
                if payload.get("errors"):
                    raise RuntimeError(payload["errors"])
                self.answered += field == "money_transfer"
                return dict(payload["data"][field])
            if message["type"] == "error":
                raise RuntimeError(message.get("payload"))

    @staticmethod
    def _transfer(accounts: dict[str, Any], kind: str, amount: int) -> dict[str, Any]:
        (first_user, first), (second_user, second) = accounts["first"], accounts["second"]
        sender, receiver, user = (second, first, second_user) if kind == "to" else (first, second, first_user)
        token = "bogus-token" if kind == "invalid_token" else sender["token"]
        return {
            "amount": amount,
            "uuid": str(uuid.uuid4()),
            "username": user,
            "token": token,
            "from": sender["iban"],
            "to": receiver["iban"],
            "descr": f"{amount} {sender['iban']} to {receiver['iban']}",
        }

    def _check(self, kind: str, answer: dict[str, Any]) -> None:
        expected = {"invalid_token": "invalid token", "insufficient_funds": "insufficient funds"}.get(kind)
        ok = answer.get("success") is True if expected is None else answer.get("reason") == expected
        if not ok:
            self.mismatches += 1
            log.warning("generator transfer %s: unexpected answer %s", kind, answer)

    @staticmethod
    def _next(kind: str, amount: int) -> tuple[str, int]:
        """The reference generator's sequence of transfers."""
        if kind == "from":
            return ("invalid_token", 100) if amount >= 5000 else ("to", amount + 100)
        if kind == "to":
            return ("insufficient_funds", 100_000) if amount >= 5000 else ("from", amount + 100)
        return ("from", 100) if kind == "invalid_token" else ("to", 100)

    @staticmethod
    async def _shutdown() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)


# -- the browser -----------------------------------------------------------------------------------------


def chromium(headless: bool = True) -> Any:
    """Debian's Chromium through Debian's chromedriver (Selenium Manager downloads nothing)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1920,1080"):
        options.add_argument(arg)
    if headless:
        options.add_argument("--headless=new")
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


class BankPage:
    """The bank's page in the browser, through the reference test's own selectors."""

    def __init__(self, driver: Any, url: str, click: str = "devtools") -> None:
        self.driver = driver
        self.url = url
        self.click = click

    def login(self, username: str, password: str, timeout_s: float = 30) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait

        d = self.driver
        d.get(self.url)
        client = (By.CSS_SELECTOR, "#flex-main-menu a:nth-child(2)")
        WebDriverWait(d, timeout_s).until(expected_conditions.element_to_be_clickable(client))
        d.find_element(*client).click()
        WebDriverWait(d, timeout_s).until(expected_conditions.element_to_be_clickable(("id", "login-button")))
        d.find_element(By.CSS_SELECTOR, "#login-form div:nth-child(1) input").send_keys(username)
        d.find_element(By.CSS_SELECTOR, "#login-form div:nth-child(2) input").send_keys(password)
        d.find_element(By.CSS_SELECTOR, "#login-form div:nth-child(3) a").click()
        WebDriverWait(d, timeout_s).until(expected_conditions.visibility_of_element_located(("id", "deposit-1000")))
        d.execute_script(WATCH)

    def newest(self) -> tuple[str | None, str | None]:
        box, amount = self.driver.execute_script(NEWEST, NEWEST_AMOUNT)
        return box, amount

    def act(self, step: int) -> tuple[str, str, float]:
        """Do step ``step`` (0..9) of the cycle: (what, the amount the newest row will show, when it was clicked).
        Filling the transfer form is not measured: the clock starts at the click."""
        from selenium.webdriver.common.by import By

        d = self.driver
        if step < 5:
            cents, shown = DEPOSITS[step]
            button = d.find_element(By.ID, f"deposit-{cents}")
            what = f"deposit {cents / 100:.2f}"
        else:
            amount, description, shown = TRANSFERS[step - 5]
            d.find_element(By.CSS_SELECTOR, "#transfer-form div:nth-child(1) input").send_keys(amount)
            d.find_element(By.CSS_SELECTOR, "#transfer-form div:nth-child(2) input").send_keys(BANK_IBAN)
            d.find_element(By.CSS_SELECTOR, "#transfer-form div:nth-child(3) input").send_keys(description)
            button = d.find_element(By.CSS_SELECTOR, "#transfer-form div:nth-child(4) div a")
            what = f"transfer {amount.replace(',', '.')}"
        if self.click == "webdriver":
            clicked = time.monotonic()
            button.click()
            return what, shown, clicked
        x, y = d.execute_script(CENTER, button)
        clicked = time.monotonic()
        for kind in ("mousePressed", "mouseReleased"):
            d.execute_cdp_cmd(
                "Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}
            )
        return what, shown, clicked

    def measure(self, step: int, timeout_s: float, poll_s: float) -> tuple[str, float | None, float | None]:
        """Step ``step``: (what, click-to-visible in ms as the reference measures it: from the click until
        the page shows the new newest row with the amount, or None after ``timeout_s``; and the same inside the
        page: from the click event until the row was inserted, without WebDriver's own time).

        The page is watched from inside (``WAIT_FOR_ROW``: on every change of the list, and every ``poll_s``
        besides), so the time seen is the click's, the bank's and one WebDriver round trip, not a poll
        interval's too (the reference polled with a WebDriver round trip each time)."""
        from selenium.common.exceptions import TimeoutException

        before, _ = self.newest()
        what, shown, start = self.act(step)
        left_ms = max(0, int((timeout_s - (time.monotonic() - start)) * 1000))
        self.driver.set_script_timeout(timeout_s + 5)
        try:
            box = self.driver.execute_async_script(
                WAIT_FOR_ROW, before, shown, NEWEST_AMOUNT, max(1, int(poll_s * 1000)), left_ms
            )
        except TimeoutException:  # the page's own timer was late by more than 5 s: a time-out all the same
            return what, None, None
        if box is None:
            return what, None, None
        seen = (time.monotonic() - start) * 1000
        in_page = self.driver.execute_script(IN_PAGE, box)
        return what, seen, None if in_page is None else float(in_page)


# -- the test --------------------------------------------------------------------------------------------


class BrowserLatencyTest:
    def __init__(
        self, url: str, config: BrowserConfig, results_dir: Path, sampler: ResourceSampler, progress: bool | None = None
    ) -> None:
        self.url = url.rstrip("/") + "/"
        self.ws_url = self.url.replace("http", "ws", 1) + "graphql-ws"
        self.config = config
        self.results_dir = results_dir
        self.sampler = sampler
        self.progress = sys.stderr.isatty() if progress is None else progress

    def run(self) -> tuple[Path, int]:
        c = self.config
        driver = chromium()
        generators = Generators(self.ws_url, uuid.uuid4().hex[:8])
        try:
            page = BankPage(driver, self.url, c.click)
            page.login("testuser", "password")
            path = results_path(self.results_dir, c.name)
            loop = time_outs = 0
            started = time.monotonic()
            last_sent, last_answered, last_at = 0, 0, time.monotonic()
            self.sampler.sample()
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, COLUMNS)
                writer.writeheader()
                while loop < c.max_loops and time_outs < c.max_time_outs:
                    loop += 1
                    while generators.count < c.generators_at(loop):
                        generators.add()
                    loop_start = time.monotonic()
                    what, ms, in_page_ms = page.measure((loop - 1) % 10, c.max_interaction_ms / 1000, c.poll_ms / 1000)
                    timed_out = ms is None
                    time_outs += timed_out
                    remaining = c.interval_ms / 1000 - (time.monotonic() - loop_start)
                    if remaining > 0:
                        time.sleep(remaining)
                    now = time.monotonic()
                    elapsed = max(now - last_at, 1e-9)
                    sent, answered = generators.sent, generators.answered
                    row = Row(
                        loop=loop,
                        time_s=now - started,
                        step=f"{what} ({generators.count} generators)",
                        feedback_ms=None,
                        balance_ms=ms,
                        timed_out=int(timed_out),
                        load_target=4 * generators.count,
                        load_offered=(sent - last_sent) / elapsed,
                        load_answered=(answered - last_answered) / elapsed,
                        reason_mismatches=generators.mismatches,
                        in_page_ms=in_page_ms,
                    )
                    last_sent, last_answered, last_at = sent, answered, now
                    if loop % c.measure_every == 0:
                        for component, (cpu, rss) in self.sampler.sample().items():
                            setattr(row, f"{component}_cpu", cpu)
                            setattr(row, f"{component}_rss_mib", rss)
                    writer.writerow({k: _fmt(v) for k, v in asdict(row).items()})
                    f.flush()
                    self._report(row, time_outs, generators.count)
        finally:
            generators.stop()
            driver.quit()
        if self.progress:
            print(file=sys.stderr)
        for failure in generators.failures:
            log.warning("%s", failure)
        return path, loop

    def _report(self, row: Row, time_outs: int, count: int) -> None:
        last = "time-out" if row.balance_ms is None else f"{row.balance_ms:.0f} ms"
        line = (
            f"loop {row.loop}/{self.config.max_loops}  {count} generators (answered {row.load_answered:.0f}/s)  "
            f"last {last}  time-outs {time_outs}/{self.config.max_time_outs}  mismatches {row.reason_mismatches}"
        )
        show_progress(line, row, self.progress, 110)
