"""The bank's page in real headless Chromium (Debian's chromium and chromedriver, through Selenium), against
the endpoint and a handler as processes: logging in, a deposit, a transfer, a refused transfer's reason, the
live list, a wrong password and the employee's view."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from open_bank_devtools.loadtest.browser import BankPage, chromium

from ..conftest import Services
from .endpoint_process import EndpointProcess, running_endpoint
from .handler_process import HandlerProcess, isolated_world
from .test_endpoint import Socket, account, transfer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def endpoint(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EndpointProcess]:
    with isolated_world(services.env, "pg" + uuid.uuid4().hex[:8]) as world:
        logs = tmp_path_factory.mktemp("logs")
        handler = HandlerProcess(world, logs).wait_ready()
        try:
            with running_endpoint(world, logs, uuid.uuid4().hex[:8]) as process:
                yield process
        finally:
            assert handler.terminate() == 0, handler.output()[-3000:]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = chromium()
    yield driver
    driver.quit()


def until(condition: Callable[[], Any], what: str, timeout_s: float = 15) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout_s}s: {what}")


def text(driver: Any, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


@pytest.fixture(scope="module")
def client_page(endpoint: EndpointProcess, browser: Any) -> BankPage:
    page = BankPage(browser, endpoint.url)
    page.login("pageuser1", "page-password")
    return page


def newest(page: BankPage) -> str | None:
    return page.newest()[1]


def test_login_shows_iban_and_token(client_page: BankPage) -> None:
    d = client_page.driver
    assert text(d, "logged-in-user") == "pageuser1"
    assert text(d, "account-iban").startswith("NL") and "OPEN" in text(d, "account-iban")
    assert len(text(d, "account-token")) == 20


def test_a_deposit_shows_in_the_list(client_page: BankPage) -> None:
    _, shown, _ = client_page.act(0)  # deposit 10 euro
    until(lambda: newest(client_page) == shown, "the deposit in the list")
    assert "€10,00 deposited" in until(lambda: text(client_page.driver, "deposit-result"), "the deposit's answer")


def test_a_transfer_shows_as_a_debit(client_page: BankPage) -> None:
    client_page.act(1)  # a deposit of 20 euro first, then 11,11 to the bank
    until(lambda: newest(client_page) == "€20,00", "the second deposit")
    _, shown, _ = client_page.act(5)
    until(lambda: newest(client_page) == shown, "the transfer in the list")
    box = client_page.driver.find_element(By.CSS_SELECTOR, "#transactions > div")
    assert "debit" in box.get_attribute("class")
    assert "NL66OPEN0000000000" in box.text and "drinks" in box.text


def test_a_refused_transfer_shows_its_reason(client_page: BankPage) -> None:
    d = client_page.driver
    d.find_element(By.ID, "transfer-amount").send_keys("9999,99")
    d.find_element(By.ID, "transfer-to").send_keys("NL66OPEN0000000000")
    d.find_element(By.ID, "transfer-descr").send_keys("far too much")
    d.find_element(By.ID, "transfer-button").click()
    until(lambda: "insufficient funds" in text(d, "transfer-result"), "the refusal's reason")
    assert "€9.999,99 not transferred" in text(d, "transfer-result")


def test_an_invalid_amount_is_explained_before_anything_is_sent(client_page: BankPage) -> None:
    d = client_page.driver
    d.find_element(By.ID, "transfer-amount").send_keys("ten euro")
    d.find_element(By.ID, "transfer-button").click()
    assert "Please give an amount in euro" in text(d, "transfer-result")


def test_money_from_someone_else_shows_up_live(client_page: BankPage, endpoint: EndpointProcess) -> None:
    iban = text(client_page.driver, "account-iban")
    other = Socket(endpoint.ws_url)
    try:
        name = f"user-{uuid.uuid4().hex[:8]}"
        them = account(other, name)
        assert transfer(other, name, "cash", 5000, "cash", them["iban"], "salary")["success"]
        assert transfer(other, name, them["token"], 1234, them["iban"], iban, "a present")["success"]
    finally:
        other.close()
    until(lambda: newest(client_page) == "€12,34", "the incoming transfer, without a reload")
    assert "a present" in client_page.driver.find_element(By.CSS_SELECTOR, "#transactions > div").text


def test_the_employee_view_lists_the_accounts(client_page: BankPage) -> None:
    d = client_page.driver
    iban = text(d, "account-iban")
    d.find_element(By.CSS_SELECTOR, "#flex-main-menu a:nth-child(1)").click()
    row = until(lambda: d.find_elements(By.CSS_SELECTOR, f'#accounts tr[data-iban="{iban}"]'), "the account's row")
    row[0].click()
    until(lambda: newest(client_page) is not None, "the followed account's transactions")
    assert iban in text(d, "following")


def test_a_wrong_password_is_refused(endpoint: EndpointProcess) -> None:
    driver = chromium()
    try:
        page = BankPage(driver, endpoint.url)
        page.login("pageuser2", "the-right-one")
        driver.find_element(By.ID, "logout-button").click()
        driver.find_element(By.ID, "login-username").send_keys("pageuser2")
        driver.find_element(By.ID, "login-password").send_keys("a-wrong-one")
        driver.find_element(By.ID, "login-button").click()
        until(lambda: "incorrect password" in text(driver, "login-result"), "the refusal")
        assert not driver.find_element(By.ID, "deposits").is_displayed()
    finally:
        driver.quit()
