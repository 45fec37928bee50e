"""The provider as a user meets it in Airflow's UI, in headless Chromium (``make ui-test``).

In order, as a user would: create both connections through their forms (checking every field, label
and help text the form shows), test them, trigger the example DAG's dry run from its trigger form,
and open the export task's link to its list. Screenshots of each step are saved in ``build/ui/``.

Airflow 3.3.2's "Test" button answers "Bad Request" for every connection type (the UI sends
``port: 0`` for a connection without a port; apache/airflow#73298, fixed upstream). The test shows
that in the browser, then proves the provider's test through the same endpoint the UI calls, with
the body a fixed UI sends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
import requests
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from airflow_provider_ciexport.get_provider_info import get_provider_info
from airflow_provider_ciexport.tools.sandbox import seed
from tests.ui.airflow_stack import AirflowStack
from tests.ui.conftest import screenshot

pytestmark = pytest.mark.ui

DAG_ID = "ciexport_segment_export"
T = TypeVar("T")


def wait_for(driver: WebDriver, find: Callable[[WebDriver], T], timeout: float = 30) -> T:
    """What ``find`` returns once it is truthy (retrying while the page renders)."""
    return WebDriverWait(driver, timeout, ignored_exceptions=(WebDriverException,)).until(find)  # type: ignore[return-value]


def button(scope: WebDriver | WebElement, text: str) -> WebElement:
    return scope.find_element(By.XPATH, f".//button[normalize-space()='{text}']")


def conn_type_entry(conn_type: str) -> dict[str, Any]:
    (entry,) = [c for c in get_provider_info()["connection-types"] if c["connection-type"] == conn_type]
    return entry


def visible_fields(dialog: WebElement) -> list[tuple[str, str, str]]:
    """(label, help text, input name) of every field the dialog shows, in order."""
    fields = []
    for group in dialog.find_elements(By.CSS_SELECTOR, "[data-part=root][role=group]"):
        if not group.is_displayed():
            continue
        label = " ".join(el.text for el in group.find_elements(By.CSS_SELECTOR, "label")).replace("\n*", "")
        helps = " ".join(el.text for el in group.find_elements(By.CSS_SELECTOR, "[data-part=helper-text]"))
        names = [
            el.get_attribute("name") or "" for el in group.find_elements(By.CSS_SELECTOR, "input,textarea")
        ]
        fields.append((label.strip(), helps.strip(), names[0] if names else ""))
    return fields


def open_add_connection(driver: WebDriver, stack: AirflowStack, type_name: str) -> WebElement:
    driver.get(f"{stack.url}/connections")
    wait_for(driver, lambda d: button(d, "Add Connection")).click()
    dialog = wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, "[role=dialog]"))
    combo = dialog.find_element(By.CSS_SELECTOR, "input[role=combobox]")
    combo.send_keys(type_name)
    wait_for(
        driver,
        lambda d: d.find_elements(By.XPATH, f"//*[@role='option' and normalize-space()='{type_name}']"),
    )
    combo.send_keys(Keys.ENTER)
    wait_for(driver, lambda d: dialog.find_elements(By.NAME, "description"))
    return dialog


def check_form(
    driver: WebDriver,
    dialog: WebElement,
    conn_type: str,
    standard: list[tuple[str, str]],
    fill: dict[str, str],
    extras: dict[str, Any],
    shot: str,
) -> None:
    """The form shows exactly ``standard`` (label, placeholder) and the provider's extra fields; fill it."""
    entry = conn_type_entry(conn_type)
    shown = [(label, name) for label, _, name in visible_fields(dialog)][2:]  # after id and type
    assert [label for label, _ in shown] == ["Description"] + [label for label, _ in standard]
    for (label, placeholder), (_, name) in zip(standard, shown[1:], strict=True):
        assert dialog.find_element(By.NAME, name).get_attribute("placeholder") == placeholder, label
    dialog.find_element(By.NAME, "connection_id").send_keys(f"{conn_type}_default")
    for name, value in fill.items():
        dialog.find_element(By.NAME, name).send_keys(value)
    screenshot(driver, f"{shot}-standard-fields")

    button(dialog, "Extra Fields").click()
    wait_for(driver, lambda d: any(name.startswith("element_") for _, _, name in visible_fields(dialog)))
    extra_fields = [f for f in visible_fields(dialog) if f[2].startswith("element_")]
    expected = [
        (spec["label"], spec["description"], f"element_{key}") for key, spec in entry["conn-fields"].items()
    ]
    assert extra_fields == expected
    for key, value in extras.items():
        field = dialog.find_element(By.NAME, f"element_{key}")
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(str(value))
    screenshot(driver, f"{shot}-extra-fields")
    button(dialog, "Save").click()
    wait_for(driver, lambda d: not d.find_elements(By.CSS_SELECTOR, "[role=dialog]"))
    wait_for(driver, lambda d: d.find_elements(By.XPATH, f"//td[normalize-space()='{conn_type}_default']"))


def test_activecampaign_connection_form(browser: WebDriver, stack: AirflowStack) -> None:
    dialog = open_add_connection(browser, stack, "ActiveCampaign")
    check_form(
        browser,
        dialog,
        "activecampaign",
        [
            ("API URL", "https://youraccount.api-us1.com (Settings > Developer)"),
            ("API key", "API key from Settings > Developer"),
        ],
        {"host": stack.sandbox.url, "password": seed.AC_API_KEY},
        {},
        "1-activecampaign-form",
    )
    stored = stack.api("GET", "/api/v2/connections/activecampaign_default")
    assert (stored["conn_type"], stored["host"]) == ("activecampaign", stack.sandbox.url)


def test_constantcontact_connection_form(browser: WebDriver, stack: AirflowStack) -> None:
    dialog = open_add_connection(browser, stack, "Constant Contact")
    sandbox = stack.sandbox.cc_connection()
    check_form(
        browser,
        dialog,
        "constantcontact",
        [
            (
                "Client ID (API key)",
                "API key of your app (then open Extra Fields: the Refresh token is required)",
            ),
            ("Client secret", "Client secret of the same app"),
        ],
        {"login": sandbox["login"], "password": sandbox["password"]},
        sandbox["extra"],
        "2-constantcontact-form",
    )
    stored = stack.api("GET", "/api/v2/connections/constantcontact_default")
    assert stored["login"] == sandbox["login"]


def ui_test_body(stack: AirflowStack, conn_id: str) -> dict[str, Any]:
    """The body the UI's "Test" button posts for a saved connection, as a fixed UI (#73298) sends it."""
    conn = stack.api("GET", f"/api/v2/connections/{conn_id}")
    body = {
        key: conn.get(key) for key in ("conn_type", "connection_id", "description", "host", "login", "schema")
    }
    body["password"] = conn.get("password") or ""
    body["extra"] = conn.get("extra") or "{}"
    return body


@pytest.mark.parametrize(
    ("conn_id", "wrong", "says"),
    [
        ("activecampaign_default", {"password": "not-the-key"}, "API key"),
        ("constantcontact_default", {"password": "not-the-secret"}, "client secret"),
    ],
)
def test_connection_test_reports_success_and_a_wrong_secret(
    browser: WebDriver, stack: AirflowStack, conn_id: str, wrong: dict[str, str], says: str
) -> None:
    browser.get(f"{stack.url}/connections")
    row = wait_for(browser, lambda d: d.find_element(By.XPATH, f"//tr[td[normalize-space()='{conn_id}']]"))
    row.find_element(By.CSS_SELECTOR, "button[aria-label='Test Connection']").click()
    toast = wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, "[data-scope=toast]"))
    wait_for(browser, lambda d: toast.text.strip())
    screenshot(browser, f"3-{conn_id}-test-button")
    message = toast.text
    if "Bad Request" in message:
        # Airflow 3.3.2's own bug: the UI posts port 0 for a connection without a port.
        answer = stack.api_response(
            "POST", "/api/v2/connections/test", json={**ui_test_body(stack, conn_id), "port": 0}
        )
        assert answer.status_code == 400 and "host or port to test differs" in answer.text
    else:
        assert "Connection successfully tested" in message or "success" in message.lower(), message

    ok = stack.api("POST", "/api/v2/connections/test", json=ui_test_body(stack, conn_id))
    assert ok["status"] is True, ok["message"]
    bad = stack.api("POST", "/api/v2/connections/test", json={**ui_test_body(stack, conn_id), **wrong})
    assert bad["status"] is False
    assert says in bad["message"], bad["message"]


def test_trigger_form_runs_a_dry_run(browser: WebDriver, stack: AirflowStack) -> None:
    browser.get(f"{stack.url}/dags/{DAG_ID}")
    wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, "button[aria-label='Trigger Dag']")).click()
    dialog = wait_for(
        browser,
        lambda d: d.find_element(By.XPATH, "//*[@role='dialog'][.//*[contains(., 'Run Parameters')]]"),
    )
    labels = [label for label, _, _ in visible_fields(dialog)]
    for param in ("Segment", "ActiveCampaign lists", "Constant Contact lists", "Dry run"):
        assert param in labels, labels
    text = dialog.text
    assert "VIP customers (2)" in text and "VIP customers" in text
    group = dialog.find_element(
        By.XPATH, ".//*[@role='group'][.//label[starts-with(normalize-space(), 'Dry run')]]"
    )
    dry_run = group.find_element(By.CSS_SELECTOR, "[data-scope=switch][data-part=control]")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", dry_run)
    dry_run.click()
    assert group.find_element(By.CSS_SELECTOR, "input[type=checkbox]").is_selected()
    screenshot(browser, "4-trigger-form-dry-run")
    before = {run["dag_run_id"] for run in stack.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns")["dag_runs"]}
    button(dialog, "Trigger").click()

    run = None
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline:
        runs = [
            r
            for r in stack.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns")["dag_runs"]
            if r["dag_run_id"] not in before
        ]
        manual = [r for r in runs if r["run_type"] == "manual"]
        if manual and manual[0]["state"] in ("success", "failed"):
            run = manual[0]
            break
        time.sleep(3)
    assert run is not None, "the triggered run did not finish in 7 minutes"
    assert run["conf"]["dry_run"] is True
    states = {
        ti["task_id"]: ti["state"]
        for ti in stack.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances")[
            "task_instances"
        ]
    }
    assert run["state"] == "success", f"task states: {states}; task logs under {stack.home}/logs"
    report = stack.api(
        "GET",
        f"/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances/export_to_activecampaign/xcomEntries/return_value",
    )["value"]
    assert report["dry_run"] is True and report["would_submit"] > 0
    assert seed.AC_LIST_VIP and not stack.sandbox.client.ac_list_contacts(seed.AC_LIST_VIP)  # nothing sent
    browser.get(f"{stack.url}/dags/{DAG_ID}/runs/{quote(run['dag_run_id'], safe='')}")
    wait_for(browser, lambda d: "export_to_activecampaign" in d.find_element(By.TAG_NAME, "body").text)
    screenshot(browser, "5-dry-run-succeeded")
    stack.last_run_id = run["dag_run_id"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("task_id", "link", "target"),
    [
        (
            "export_to_activecampaign",
            "ActiveCampaign list",
            f"/_sandbox/ac/lists/{seed.AC_LIST_VIP}/contacts",
        ),
        (
            "export_to_constantcontact",
            "Constant Contact list",
            f"/_sandbox/cc/lists/{seed.CC_LIST_VIP}/contacts",
        ),
    ],
)
def test_export_task_shows_its_list_link(
    browser: WebDriver, stack: AirflowStack, task_id: str, link: str, target: str
) -> None:
    run_id = getattr(stack, "last_run_id", None)
    if run_id is None:
        pytest.skip("needs the triggered run of test_trigger_form_runs_a_dry_run")
    # The task instance's Details tab lists its extra links.
    browser.get(f"{stack.url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/{task_id}/details")
    anchor = wait_for(browser, lambda d: d.find_element(By.XPATH, f"//a[normalize-space()='{link}']"))
    href = anchor.get_attribute("href")
    assert href == f"{stack.sandbox.url}{target}"
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", anchor)
    screenshot(browser, f"6-{task_id}-extra-link")
    assert requests.get(href, timeout=30).json()["contacts"] == []  # the list, empty after a dry run
