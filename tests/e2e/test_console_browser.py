"""The web console in a real browser (Debian's Chromium, driven by Playwright) against the real
service processes, a real runner and the gateway serving the committed build: what issue 16 asks
a person to be able to do, each page also checked by axe-core for serious or critical problems.

INNOSYSTEM_CONSOLE_SCREENSHOTS=1 also saves each main view under docs/console/.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyotp
import pytest

from innosystem.demo import Demo, seed
from innosystem.rest import Rest
from innosystem.stack import Stack
from tests.e2e.conftest import watch_until_final
from tests.keys.keymanager_process import KeyManagerProcess, start_keymanager
from tests.support.console_browser import chromium, screenshot, serious_violations, sign_in
from tests.support.identity import PASSWORD, invite_and_accept
from tests.support.identity import sign_in as api_sign_in

WAIT_MS = 60_000  # a generous bound for a busy machine; every wait ends on what the page shows


@dataclass(frozen=True)
class World:
    base: str
    demo: Demo
    customer: Rest  # the demo customer's API key, for setting the scene
    people: dict[str, tuple[str, str]]  # owner, viewer, operator → (e-mail, password)


@pytest.fixture(scope="module")
def world(stack: Stack) -> Iterator[World]:
    admin = Rest(stack.gateway_url, stack.admin_api_key)
    demo = seed(admin, label="console")
    people = demo_people(stack, admin, demo)
    # Only the processors these tests run: a runner that has just stopped can still be offered a job
    # for a moment (it hands it back), which would add an attempt to another module's `echo` job.
    stack.spawn("runner-console", ["runner", "--target", stack.address("runners"), "--slots", "4",
                                   "--processor", "sleep", "--processor", "fail"],
                {"INNOSYSTEM_RUNNER_TOKEN": demo.runner_token})
    try:
        connected(admin, demo.runner_id)
        yield World(stack.gateway_url, demo, admin.as_key(demo.api_key), people)
    finally:
        stack.stop_process("runner-console")


def demo_people(stack: Stack, admin: Rest, demo: Demo) -> dict[str, tuple[str, str]]:
    """An owner and a viewer of the demo customer and a platform operator, each with its own
    e-mail (users are unique by e-mail across the platform, and other tests seed theirs)."""
    suffix = uuid.uuid4().hex[:8]
    people = {}
    for who, account, role in (("owner", f"/v1/customers/{demo.customer_id}", "ROLE_OWNER"),
                               ("viewer", f"/v1/customers/{demo.customer_id}", "ROLE_VIEWER"),
                               ("operator", "", "ROLE_OWNER"),
                               ("reseller", f"/v1/resellers/{reseller_of(admin, demo)}", "ROLE_OWNER")):
        email = f"console-{who}-{suffix}@example.com"
        invite_and_accept(stack.gateway_url, stack.admin_api_key, account, email, role, PASSWORD)
        people[who] = (email, PASSWORD)
    return people


def connected(admin: Rest, runner_id: str, timeout: float = 120.0) -> None:
    """Until the runner process has its stream open (a busy machine may take a while to start it):
    a job the first test submits is then seen running, not waiting for a runner."""
    deadline = time.monotonic() + timeout
    while admin("GET", f"/v1/runners/{runner_id}")["status"] not in ("RUNNER_STATUS_AVAILABLE", "RUNNER_STATUS_BUSY"):
        assert time.monotonic() < deadline, f"runner {runner_id} did not connect within {timeout}s"
        time.sleep(0.2)


def reseller_of(admin: Rest, demo: Demo) -> str:
    return str(admin("GET", f"/v1/customers/{demo.customer_id}")["resellerId"])


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(locale="en-GB", timezone_id="Europe/Helsinki",
                                  viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    yield page
    context.close()
    assert not errors, f"the console threw: {errors}"


def accessible(page: Any) -> None:
    assert serious_violations(page) == []


def usd(cents: int) -> str:
    """What en-GB Intl shows for US dollars."""
    return f"US${cents / 100:,.2f}"


def balance(world: World) -> int:
    return int(world.customer("GET", f"/v1/customers/{world.demo.customer_id}/wallet")["balanceCents"])


def test_a_customer_creates_a_project_and_type_runs_a_job_live_and_pays_for_it(world: World, page: Any) -> None:
    email, password = world.people["owner"]
    sign_in(page, world.base, email, password)
    page.get_by_role("heading", name="Overview").wait_for()
    page.get_by_text("Jobs in the last 24 hours").wait_for()
    # the shared runner this module started serves the catalog's sleep type (a customer does not
    # list the platform's runners, but sees how many serve each catalog type)
    assert int(page.locator("[data-testid=shared-runners] tr[data-type=sleep] [data-testid=online]").inner_text()) >= 1
    accessible(page)

    page.get_by_role("link", name="Projects").click()
    page.get_by_label("New project name").fill("console-e2e")
    page.get_by_role("button", name="Create project").click()
    page.get_by_role("button", name="console-e2e").wait_for()
    page.get_by_label("Name", exact=True).fill("console-own")  # its own type: its runners, the platform fee
    page.get_by_role("button", name="Create job type").click()
    page.locator("[data-testid=job-type-row]", has_text="console-own").wait_for()
    accessible(page)
    screenshot(page, "projects")

    before = balance(world)
    page.get_by_role("link", name="Jobs").click()
    page.get_by_role("heading", name="Jobs").wait_for()
    page.locator("[data-testid=filter-project]").select_option(label="console-e2e")
    page.locator("[data-testid=submit-type]").select_option(label="sleep (catalog)")  # the demo runner serves it
    page.get_by_label("Payload (JSON)").fill('{"seconds": 10}')  # seen running even on a busy machine
    page.get_by_role("button", name="Submit", exact=True).click()

    # The job's page follows it live (SSE): Running, then Succeeded, then its capture on the timeline.
    status = page.locator("[data-testid=job-status] [data-status]")
    page.locator("[data-testid=job-status] [data-status=JOB_STATUS_RUNNING]").wait_for()
    page.get_by_text(re.compile(r"Progress: \d+ %")).wait_for()  # the sleep processor reports as it goes
    page.locator("[data-testid=job-status] [data-status=JOB_STATUS_SUCCEEDED]").wait_for()
    assert status.inner_text() == "Succeeded"
    page.locator("[data-testid=timeline] li[data-kind=money]", has_text="Capture").wait_for()
    # the catalog's sleep costs a cent per started second of run time (10 s asked), up to its cap
    charged = before - balance(world)
    assert 10 <= charged <= 300 and page.locator("[data-testid=job-cost]").inner_text() == usd(charged)
    accessible(page)
    screenshot(page, "job")

    page.get_by_role("link", name="Wallet").click()
    page.locator("[data-testid=balance]", has_text=usd(before - charged)).wait_for()
    accessible(page)
    screenshot(page, "wallet")
    page.get_by_role("link", name="Overview").click()
    page.locator("[data-testid=available]", has_text=usd(before - charged)).wait_for()
    page.locator("[data-testid=jobs-24h][aria-busy=false]").wait_for()  # every project counted
    screenshot(page, "overview")


def test_an_owner_edits_a_project_and_pauses_it_where_a_viewer_only_reads(world: World, browser: Any,
                                                                          page: Any) -> None:
    name = f"console-edit-{uuid.uuid4().hex[:6]}"
    project = world.customer("POST", f"/v1/customers/{world.demo.customer_id}/projects", {"name": name})
    email, password = world.people["owner"]
    sign_in(page, world.base, email, password)
    page.get_by_role("link", name="Projects").click()
    page.get_by_role("button", name=name).click()
    settings = page.locator("[data-testid=project-settings]")
    settings.get_by_label("Project name").fill(f"{name}-renamed")
    settings.get_by_label("Project description").fill("edited in the console")
    settings.get_by_role("button", name="Save project").click()
    page.get_by_role("button", name=f"{name}-renamed").wait_for()
    stored = world.customer("GET", f"/v1/projects/{project['id']}")
    assert (stored["name"], stored["description"]) == (f"{name}-renamed", "edited in the console")

    # Paused: it takes no new jobs (the server says so), and the console shows it; then resumed.
    settings.locator("[data-testid=project-active]", has_text="Enabled").click()
    settings.locator("[data-testid=project-active]", has_text="Disabled").wait_for()
    assert world.customer("GET", f"/v1/projects/{project['id']}")["active"] is False
    accessible(page)
    settings.locator("[data-testid=project-active]").click()
    settings.locator("[data-testid=project-active]", has_text="Enabled").wait_for()
    assert world.customer("GET", f"/v1/projects/{project['id']}").get("active", True) is True

    email, password = world.people["viewer"]
    viewer = browser.new_context(locale="en-GB").new_page()
    viewer.set_default_timeout(WAIT_MS)
    sign_in(viewer, world.base, email, password)
    viewer.get_by_role("link", name="Projects").click()
    viewer.get_by_role("button", name=f"{name}-renamed").click()
    viewer.get_by_text("edited in the console").wait_for()
    assert viewer.locator("[data-testid=project-settings]").count() == 0
    viewer.context.close()


def test_the_access_log_chain_verifies_and_the_team_page_makes_a_key(world: World, page: Any) -> None:
    email, password = world.people["owner"]
    sign_in(page, world.base, email, password)
    page.get_by_role("link", name="Access log").click()
    page.get_by_role("button", name="Verify the chain").click()
    result = page.locator("[data-testid=verification]")
    result.wait_for()
    assert re.fullmatch(r"Chain intact: \d+ records checked\.", result.inner_text())
    # A notification channel: a bad URL is refused naming the field, a good one shows its secret once.
    page.get_by_label("Webhook URL (https)").fill("http://hooks.example.com/innosystem")
    page.get_by_role("button", name="Add channel").click()
    page.get_by_role("alert").filter(has_text="webhook_url").wait_for()
    page.get_by_label("Webhook URL (https)").fill("https://hooks.example.com/innosystem")
    page.get_by_label("Name", exact=True).fill("security team")
    page.get_by_label("wallet balance low").check()  # billing's low-balance events, on the same channel
    page.get_by_role("button", name="Add channel").click()
    page.get_by_text("Copy the signing secret now").wait_for()
    page.get_by_text(re.compile("security team · access not for a job, wallet balance low")).wait_for()
    accessible(page)
    screenshot(page, "access")

    page.get_by_role("link", name="Keys and runners").click()
    page.get_by_text("No encryption keys registered.").wait_for()
    accessible(page)

    page.get_by_role("link", name="Team and keys").click()
    page.get_by_role("cell", name=world.people["viewer"][0]).wait_for()
    page.get_by_label("Name", exact=True).last.fill("console-ci")
    page.get_by_role("button", name="Create key").click()
    page.get_by_text("Copy the key now").wait_for()
    assert page.locator("[role=status] code").inner_text().startswith("isk_")
    accessible(page)
    screenshot(page, "team")


def failed_jobs(world: World, count: int, **body: Any) -> list[str]:
    """Jobs of the demo's `fail` type, each failed for good (one attempt)."""
    jobs = [world.customer("POST", f"/v1/projects/{world.demo.project_id}/jobs",
                           {"jobTypeId": world.demo.job_type_ids["fail"], "payload": {"n": n},
                            "retryPolicy": {"maxAttempts": 1}, **body})["id"] for n in range(count)]
    for job_id in jobs:
        assert watch_until_final(world.base, world.demo.api_key, job_id) == "JOB_STATUS_FAILED"
    return jobs


def pending_count(world: World, job_id: str) -> int:
    history = world.customer("GET", f"/v1/jobs/{job_id}?view=JOB_VIEW_FULL")["statusHistory"]
    return [change["status"] for change in history].count("JOB_STATUS_PENDING")


def test_bulk_retry_of_failed_jobs_confirms_the_servers_count_and_refuses_an_empty_filter(
        world: World, page: Any) -> None:
    jobs = failed_jobs(world, 2)
    # The server refuses an empty filter too, naming it, whatever a client does.
    status, answer = world.customer.call("POST", f"/v1/projects/{world.demo.project_id}/jobs:batchRetry",
                                         {"filter": {}})
    assert status == 400 and "EMPTY_FILTER" in str(answer) and pending_count(world, jobs[0]) == 1

    email, password = world.people["owner"]
    sign_in(page, world.base, email, password)
    page.get_by_role("link", name="Jobs").click()
    page.get_by_role("heading", name="Jobs").wait_for()
    page.locator("[data-testid=filter-project]").select_option(label="console")
    page.get_by_role("button", name="Retry matching").click()
    page.get_by_role("alert").filter(has_text="Choose a filter first").wait_for()

    page.locator("[data-testid=filter-status]").select_option("JOB_STATUS_FAILED")
    page.locator("[data-testid=filter-type]").select_option(label="fail")
    page.locator("[data-testid=job-row]").nth(1).wait_for()
    with page.expect_response(lambda r: r.url.endswith("/jobs:batchRetry")) as counted:
        page.get_by_role("button", name="Retry matching").click()
    assert counted.value.request.post_data_json["validateOnly"] is True
    assert counted.value.json()["matchedCount"] == "2"  # the confirmation's count is the server's
    page.get_by_text("Retry 2 jobs?").wait_for()
    assert pending_count(world, jobs[0]) == 1  # counting changed nothing
    accessible(page)
    screenshot(page, "jobs")
    with page.expect_response(lambda r: r.url.endswith("/jobs:batchRetry")) as retried:
        page.get_by_role("button", name="Confirm").click()
    assert "validateOnly" not in retried.value.request.post_data_json and retried.value.json()["changedCount"] == "2"
    page.get_by_text("2 done, 0 refused.").wait_for()
    for job_id in jobs:  # each went back to the queue once more
        assert pending_count(world, job_id) == 2


def test_the_search_box_finds_a_job_by_its_request_id_on_the_server(world: World, page: Any) -> None:
    request_id = f"console-search-{uuid.uuid4().hex[:8]}"
    later = {"jobTypeId": world.demo.job_type_ids["echo"], "payload": {}, "scheduleTime": _in_an_hour()}
    wanted = world.customer("POST", f"/v1/projects/{world.demo.project_id}/jobs", {**later, "requestId": request_id})
    other = world.customer("POST", f"/v1/projects/{world.demo.project_id}/jobs", later)
    try:
        email, password = world.people["owner"]
        sign_in(page, world.base, email, password)
        page.get_by_role("link", name="Jobs").click()
        page.locator("[data-testid=filter-project]").select_option(label="console")
        page.locator(f"[data-testid=job-row][data-job-id='{other['id']}']").wait_for()
        page.locator("[data-testid=search]").fill(request_id)
        with page.expect_response(lambda r: "/jobs?" in r.url and f"requestId={request_id}" in r.url) as searched:
            page.locator("[data-testid=search]").press("Enter")
        assert [job["id"] for job in searched.value.json()["jobs"]] == [wanted["id"]]
        page.get_by_text("1 jobs shown").wait_for()
        rows = page.locator("[data-testid=job-row]")
        assert rows.count() == 1 and rows.first.get_attribute("data-job-id") == wanted["id"]
        accessible(page)
    finally:
        for job in (wanted, other):
            world.customer("POST", f"/v1/jobs/{job['id']}:cancel", {})


def test_an_operator_lists_dead_letters_across_tenants_and_retries_one(world: World, page: Any) -> None:
    (job_id,) = failed_jobs(world, 1)
    email, password = world.people["operator"]
    sign_in(page, world.base, email, password)
    page.get_by_role("link", name="Dead letters").click()
    page.get_by_role("heading", name="Dead letters").wait_for()
    row = page.locator(f"[data-testid=dead-letter-row][data-job-id='{job_id}']")
    # the customers' names come from a second read: until it answers, the row shows the id's prefix
    row.filter(has_text="Console Customer").wait_for()
    assert "fail" in row.inner_text()
    accessible(page)
    screenshot(page, "operator-dead-letters")
    row.get_by_role("button", name=f"Retry job {job_id}").click()
    page.get_by_role("status").filter(has_text=f"Job {job_id} is queued again.").wait_for()
    assert row.count() == 0 and pending_count(world, job_id) == 2


def test_finnish_labels_and_money_and_the_choice_is_kept(world: World, page: Any) -> None:
    email, password = world.people["owner"]
    sign_in(page, world.base, email, password)
    page.get_by_role("link", name="Wallet").click()
    page.locator("[data-testid=balance]").wait_for()
    with page.expect_response(lambda r: "/v1/users/" in r.url and r.request.method == "PATCH") as saved:
        page.locator("[data-testid=locale]").select_option("fi")
    assert saved.value.ok
    page.get_by_role("heading", name="Lompakko").wait_for()
    page.get_by_role("link", name="Työt").wait_for()
    # fi-FI: a space groups thousands, a comma before the cents, the sign after the amount.
    assert re.fullmatch(r"[\d\s]+,\d{2}\s\$", page.locator("[data-testid=balance]").inner_text()), \
        page.locator("[data-testid=balance]").inner_text()
    accessible(page)
    screenshot(page, "wallet-fi")
    page.context.clear_cookies()  # another browser: the choice comes back with the user
    page.evaluate("localStorage.clear()")
    sign_in(page, world.base, email, password)
    page.get_by_role("link", name="Lompakko").wait_for()
    with page.expect_response(lambda r: "/v1/users/" in r.url and r.request.method == "PATCH") as saved:
        page.locator("[data-testid=locale]").select_option("en")  # leave the user as the other tests expect
    assert saved.value.ok


def test_an_owner_sets_a_low_balance_threshold_and_sees_its_event_where_a_viewer_only_reads(
        world: World, browser: Any, page: Any) -> None:
    wallet = f"/v1/customers/{world.demo.customer_id}/wallet"
    above = (int(world.customer("GET", wallet)["availableCents"]) // 100 + 1) * 100  # crosses when set
    try:
        email, password = world.people["owner"]
        sign_in(page, world.base, email, password)
        page.get_by_role("link", name="Wallet").click()
        page.get_by_text("No low-balance events.").wait_for()
        page.get_by_label("Alert when available falls below").fill(str(above // 100))
        page.get_by_role("button", name="Save threshold").click()
        page.get_by_text(f"Threshold saved: {usd(above)}").wait_for()
        page.locator("[data-testid=threshold]", has_text=usd(above)).wait_for()
        [event] = world.customer("GET", f"{wallet}/events")["events"]  # billing recorded the crossing
        assert event["thresholdCents"] == str(above), event
        row = page.locator("[data-testid=wallet-events] tbody tr", has_text=usd(int(event["availableCents"])))
        row.wait_for()
        assert usd(above) in row.inner_text()
        accessible(page)

        email, password = world.people["viewer"]
        viewer = browser.new_context(locale="en-GB").new_page()
        viewer.set_default_timeout(WAIT_MS)
        sign_in(viewer, world.base, email, password)
        viewer.get_by_role("link", name="Wallet").click()
        viewer.locator("[data-testid=wallet-events] tbody tr", has_text=usd(above)).wait_for()
        assert viewer.get_by_role("button", name="Save threshold").count() == 0
        viewer.context.close()
    finally:  # off again, as the other tests expect the wallet
        world.customer("PATCH", f"{wallet}?updateMask=low_balance_threshold_cents", {"lowBalanceThresholdCents": "0"})


def test_a_person_with_a_second_factor_is_asked_for_the_code(world: World, page: Any) -> None:
    email = f"console-totp-{uuid.uuid4().hex[:8]}@example.com"
    invite_and_accept(world.base, world.demo.api_key, f"/v1/customers/{world.demo.customer_id}", email,
                      "ROLE_DEVELOPER", PASSWORD)
    person = api_sign_in(world.base, email, PASSWORD)
    enrolled = person.call("POST", f"/v1/users/{person.user['userId']}:enrollTotp")
    totp = pyotp.TOTP(enrolled.body["secret"])
    confirmed = person.call("POST", f"/v1/users/{person.user['userId']}:confirmTotp",
                            {"secret": enrolled.body["secret"], "code": totp.now()})
    assert confirmed.status == 200, confirmed.body

    page.goto(f"{world.base}/console/sign-in")
    page.locator("input[type=email]").fill(email)
    page.locator("input[type=password]").fill(PASSWORD)
    page.locator("button[type=submit]").click()
    page.get_by_role("alert").filter(has_text="Enter the code from your authenticator app.").wait_for()
    accessible(page)
    page.get_by_label("Authenticator code").fill(totp.at(time.time() + 30))  # confirming spent this step's code
    page.locator("button[type=submit]").click()
    page.get_by_text(email).wait_for()
    page.get_by_role("heading", name="Overview").wait_for()


def test_an_operator_sees_the_queues_and_runners(world: World, page: Any) -> None:
    later = {"jobTypeId": world.demo.job_type_ids["echo"], "payload": {}, "scheduleTime": _in_an_hour()}
    jobs = [world.customer("POST", f"/v1/projects/{world.demo.project_id}/jobs", later)]  # something queued
    try:
        email, password = world.people["operator"]
        with page.expect_response(lambda r: "/v1/queueStats:watch" in r.url):  # the statistics stream
            sign_in(page, world.base, email, password)
        page.get_by_role("heading", name="Queues").wait_for()
        row = page.locator("[data-testid=queues] tbody tr", has_text="echo").filter(
            has_text=world.demo.customer_id[:8]).first
        row.wait_for()
        page.get_by_role("cell", name="console-runner").wait_for()
        accessible(page)
        screenshot(page, "operator-queues")
        # Live: one more scheduled job shows in the row from the stream (the page reads no statistics itself).
        scheduled = row.locator("td").nth(4)
        before = int(re.sub(r"\D", "", scheduled.inner_text()))
        reads: list[str] = []
        page.on("request", lambda r: reads.append(r.url) if r.url.endswith("/v1/queueStats") else None)
        jobs.append(world.customer("POST", f"/v1/projects/{world.demo.project_id}/jobs", later))
        page.wait_for_function("([cell, n]) => Number(cell.textContent.replace(/\\D/g, '')) === n",
                               arg=[scheduled.element_handle(), before + 1])
        assert reads == []
    finally:
        for job in jobs:
            world.customer("POST", f"/v1/jobs/{job['id']}:cancel", {})


def test_the_job_list_follows_its_stream_without_reading_the_list_again(world: World, page: Any) -> None:
    email, password = world.people["owner"]
    sign_in(page, world.base, email, password)
    page.get_by_role("link", name="Jobs").click()
    page.get_by_role("heading", name="Jobs").wait_for()
    page.locator("[data-testid=filter-project]").select_option(label="console")
    with page.expect_response(lambda r: ":watch" in r.url and "JOB_STATUS_SCHEDULED" in r.url) as opened:
        page.locator("[data-testid=filter-status]").select_option("JOB_STATUS_SCHEDULED")
    assert opened.value.headers["content-type"].startswith("text/event-stream")
    reads: list[str] = []
    page.on("request", lambda r: reads.append(r.url) if re.search(r"/jobs(\?|$)", r.url) else None)

    job = world.customer("POST", f"/v1/projects/{world.demo.project_id}/jobs",
                         {"jobTypeId": world.demo.job_type_ids["echo"], "payload": {}, "scheduleTime": _in_an_hour()})
    row = page.locator(f"[data-testid=job-row][data-job-id='{job['id']}']")
    row.wait_for()  # arrived on the stream
    accessible(page)
    world.customer("POST", f"/v1/jobs/{job['id']}:cancel", {})
    row.wait_for(state="detached")  # cancelled: no longer a scheduled job
    assert reads == [], reads  # neither came from reading the list again


def test_a_reseller_tops_up_its_customer(world: World, page: Any) -> None:
    before = balance(world)
    email, password = world.people["reseller"]
    sign_in(page, world.base, email, password)
    page.get_by_role("heading", name="Customers").wait_for()
    page.get_by_label("Top-up amount for Console Customer").fill("5")
    row = page.locator("tr", has_text="Console Customer")
    row.get_by_role("button", name="Top up").click()
    page.get_by_text("Added US$5.00.").wait_for()
    assert balance(world) == before + 500
    accessible(page)
    screenshot(page, "reseller")


def test_a_viewer_is_offered_no_cancel_where_an_owner_is(world: World, browser: Any, page: Any) -> None:
    job = world.customer("POST", f"/v1/projects/{world.demo.project_id}/jobs",
                         {"jobTypeId": world.demo.job_type_ids["echo"], "payload": {}, "scheduleTime": _in_an_hour()})
    try:
        email, password = world.people["owner"]
        sign_in(page, world.base, email, password)
        page.goto(f"{world.base}/console/jobs/{job['id']}")
        page.get_by_role("button", name="Cancel job").wait_for()

        email, password = world.people["viewer"]
        viewer = browser.new_context(locale="en-GB").new_page()
        viewer.set_default_timeout(WAIT_MS)
        sign_in(viewer, world.base, email, password)
        viewer.goto(f"{world.base}/console/jobs/{job['id']}")
        viewer.locator("[data-testid=job-status] [data-status=JOB_STATUS_SCHEDULED]").wait_for()
        assert viewer.get_by_role("button", name="Cancel job").count() == 0
        viewer.goto(f"{world.base}/console/jobs")
        viewer.get_by_role("heading", name="Jobs").wait_for()
        assert viewer.get_by_role("button", name="Retry matching").count() == 0
        assert viewer.get_by_role("button", name="Submit", exact=True).count() == 0

        viewer.get_by_role("button", name="Sign out").click()
        viewer.locator("input[type=password]").wait_for()
        viewer.goto(f"{world.base}/console/jobs")  # the session is gone: back to the sign-in form
        viewer.locator("input[type=email]").wait_for()
        viewer.context.close()
    finally:
        world.customer("POST", f"/v1/jobs/{job['id']}:cancel", {})


def _in_an_hour() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))


def test_ten_thousand_jobs_page_in_as_you_scroll_with_few_rows_in_the_page(world: World, page: Any) -> None:
    project = world.customer("POST", f"/v1/customers/{world.demo.customer_id}/projects", {"name": "console-10k"})
    # A type no runner serves, free: the jobs stay pending and hold nothing.
    unserved = world.customer("POST", f"/v1/projects/{project['id']}/jobTypes",
                              {"name": "unserved"})
    for batch in range(10):
        world.customer("POST", f"/v1/projects/{project['id']}/jobs:batchSubmit",
                       {"requests": [{"jobTypeId": unserved["id"], "payload": {"n": batch * 1000 + n}}
                                     for n in range(1000)]})

    email, password = world.people["owner"]
    sign_in(page, world.base, email, password)
    page.get_by_role("link", name="Jobs").click()
    page.get_by_role("heading", name="Jobs").wait_for()
    page.locator("[data-testid=filter-project]").select_option(label="console-10k")
    page.locator("[data-testid=job-row]").first.wait_for()
    region = page.get_by_role("region", name="Jobs")
    count = page.locator("[data-testid=job-count]")
    most_rows = 0
    for _ in range(500):  # one keyset page (200 jobs) per scroll to the end
        shown = count.inner_text()
        most_rows = max(most_rows, page.locator("[data-testid=job-row]").count())
        if shown == "10,000 jobs shown":
            break
        region.evaluate("el => { el.scrollTop = el.scrollHeight; }")
        page.wait_for_function("before => document.querySelector('[data-testid=job-count]').textContent.trim() "
                               "!== before", arg=shown)
    assert count.inner_text() == "10,000 jobs shown"
    assert 0 < most_rows < 100, f"{most_rows} rows in the page: the list is not virtualized"


@pytest.fixture(scope="module")
def keymanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyManagerProcess]:
    km = start_keymanager(tmp_path_factory.mktemp("console-km"), "cmk-console")
    yield km
    km.stop()


def test_a_customer_registers_uses_rotates_and_revokes_an_encryption_key(
        world: World, page: Any, keymanager: KeyManagerProcess) -> None:
    # Its own project: a revoked key stops the project's submits, which the other tests make.
    project = world.customer("POST", f"/v1/customers/{world.demo.customer_id}/projects", {"name": "console-keys"})
    email, password = world.people["owner"]
    sign_in(page, world.base, email, password)
    page.get_by_role("link", name="Keys and runners").click()
    page.get_by_label("Key manager URL").fill(keymanager.grpc_url)
    page.get_by_label("Key id at the key manager").fill("cmk-console")
    page.get_by_label("Shared secret (32+ characters)").fill(keymanager.secret)
    page.get_by_label("Description").fill("console key")
    page.get_by_role("button", name="Register key").click()
    page.get_by_role("status").filter(has_text="Key registered and verified.").wait_for()
    row = page.locator("[data-testid=client-key-row]", has_text="console key")
    key_id = row.get_attribute("data-key-id")
    assert row.locator("[data-testid=key-state]").inner_text() == "Active"
    assert page.get_by_label("Shared secret (32+ characters)").input_value() == ""  # not kept in the form
    assert keymanager.secret not in page.content()

    row.get_by_label("Project for key console key").select_option(label="console-keys")
    row.get_by_role("button", name="Use for project").click()
    page.get_by_role("status").filter(has_text="Project console-keys now encrypts new jobs").wait_for()
    assert world.customer("GET", f"/v1/projects/{project['id']}")["encryptionKeyId"] == key_id

    row.get_by_role("button", name="Rotate").click()
    page.get_by_role("status").filter(has_text="Key rotated").wait_for()
    row.locator("[data-testid=key-version]", has_text="2").wait_for()
    accessible(page)
    screenshot(page, "keys")

    row.get_by_role("button", name="Revoke…").click()
    dialog = page.get_by_role("alertdialog")
    assert dialog.get_by_role("button", name="Revoke key").is_disabled()  # only once the loss is acknowledged
    dialog.get_by_label("I understand that this data becomes unreadable for good.").check()
    accessible(page)
    dialog.get_by_role("button", name="Revoke key").click()
    row.locator("[data-testid=key-state]", has_text="Disabled").wait_for()
    assert world.customer("GET", f"/v1/keys/{key_id}")["state"] == "CLIENT_KEY_STATE_DISABLED"
