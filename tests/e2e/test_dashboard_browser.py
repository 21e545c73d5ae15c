"""The dashboard in a real headless Chromium (Debian's chromium, driven by Selenium through
its chromedriver), against a real `serve --config` process with keys, a review route and
prompts on our fake upstream: every page loads without console errors (a screenshot of
each is written), a reviewer approves a case with the keyboard and the client's poll sees
it, moving a prompt label back in the UI changes the version the next request uses,
script in an answer is shown as text, a form without its CSRF token is refused, and a
viewer key cannot reach the admin page."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferline.bench.fake_upstream import FakeUpstreamHandle
from tests.e2e.conftest import BIN, ServerProcess, free_port, start_server, stop_server

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("INFERLINE_SCREENSHOTS", REPO / "tests" / "screenshots"))
ADMIN = "admin-ui-key"
EVIL = '<script>window.pwned = 1</script><b id="bold">bold</b>'
REFUND = {"kind": "tool_call", "name": "refund", "arguments": json.dumps({"note": EVIL})}


def _browser_ready() -> str | None:
    """Why the browser tests cannot run (None: they can): installs chromium when root."""
    done = subprocess.run([str(REPO / "scripts" / "browser-deps")], capture_output=True, text=True)
    if done.returncode != 0:
        return f"no chromium/chromedriver: {done.stderr.strip()[-300:]}"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e .[dev])"
    return None


def config(upstream: FakeUpstreamHandle) -> str:
    remote = (f'{{name: tooly, kind: openai, base_url: "{upstream.api_base}", model: tooly, '
              "price: {input_per_mtok: 10, output_per_mtok: 20}}")  # fmt: skip
    partner = (f'{{name: partner, kind: openai, base_url: "{upstream.api_base}", '
               "model: partner}")  # fmt: skip
    return f"""models:
  - {remote}
  - {partner}
routes:
  - name: agent
    targets: [tooly]
    checks: [{{on: tool_call, tools: [refund], action: review, deadline_s: 600}}]
    abstain_text: "The refund was not approved."
  - name: bot
    targets: [partner]
"""


@pytest.fixture(scope="module")
def server(upstream: FakeUpstreamHandle, tmp_path_factory: Any) -> Iterator[ServerProcess]:
    why = _browser_ready()
    if why is not None:
        pytest.skip(why)
    directory = Path(tmp_path_factory.mktemp("dashboard"))
    (directory / "gateway.yaml").write_text(config(upstream))
    database_url = f"sqlite:///{directory / 'requests.db'}"
    for n, wording in enumerate(("Answer briefly.", "Answer in one sentence.")):
        body = {"id": "greet", "route": "bot", "messages": [{"role": "system", "content": wording}]}
        path = directory / f"greet-{n}.yaml"
        path.write_text(json.dumps(body))
        subprocess.run([str(BIN), "prompts", "push", str(path), "--database-url", database_url],
                       check=True, capture_output=True, timeout=60)  # fmt: skip
    process = start_server(directory, "--config", str(directory / "gateway.yaml"),
                           "--api-key", ADMIN, port=free_port())  # fmt: skip
    yield process
    stop_server(process)


def _key(server: ServerProcess, role: str) -> str:
    made = httpx.post(f"{server.base_url}/admin/keys", json={"name": f"{role}-ui", "role": role},
                      headers={"authorization": f"Bearer {ADMIN}"})  # fmt: skip
    assert made.status_code == 200, made.text
    return str(made.json()["key"])


@pytest.fixture(scope="module")
def chrome() -> Iterator[Any]:
    why = _browser_ready()  # installs chromium first on a fresh root machine
    if why is not None:
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1000"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def sign_in(chrome: Any, server: ServerProcess, key: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chrome.delete_all_cookies()
    chrome.get(f"{server.base_url}/ui/login")
    chrome.find_element(By.ID, "key").send_keys(key)
    chrome.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    WebDriverWait(chrome, 10).until(lambda d: "/ui/login" not in d.current_url)


def visit(chrome: Any, url: str, shot: str, refused: bool = False) -> None:
    """Loads a page; fails on any console error (but the page's own 403 when ``refused``);
    writes its screenshot."""
    chrome.get_log("browser")  # drop what came before
    chrome.get(url)
    errors = [e for e in chrome.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    if refused:
        errors = [e for e in errors if "status of 403" not in e["message"]]
    assert not errors, errors
    SHOTS.mkdir(parents=True, exist_ok=True)
    chrome.save_screenshot(str(SHOTS / f"{shot}.png"))


def open_case(server: ServerProcess, key: str, upstream: FakeUpstreamHandle) -> tuple[str, str]:
    """A tool call held for review: (review id, request id)."""
    upstream.script("tooly", REFUND)
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json={
        "model": "agent", "messages": [{"role": "user", "content": f"refund order 7 {EVIL}"}],
        "tools": [{"type": "function", "function": {"name": "refund", "parameters": {}}}],
    }, headers={"authorization": f"Bearer {key}"}, timeout=60)  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()["inferline"]["review_id"], response.headers["x-request-id"]


def start_batch(server: ServerProcess) -> str:
    """A two-line batch job on the bot route: its id."""
    auth = {"authorization": f"Bearer {ADMIN}"}
    body = {"model": "bot", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    lines = "".join(json.dumps({"custom_id": f"c{n}", "method": "POST",
                                "url": "/v1/chat/completions", "body": body}) + "\n"
                    for n in range(2))  # fmt: skip
    uploaded = httpx.post(f"{server.base_url}/v1/files", headers=auth, data={"purpose": "batch"},
                          files={"file": ("in.jsonl", lines.encode())})  # fmt: skip
    assert uploaded.status_code == 200, uploaded.text
    made = httpx.post(f"{server.base_url}/v1/batches", headers=auth, json={
        "input_file_id": uploaded.json()["id"], "endpoint": "/v1/chat/completions",
        "completion_window": "24h"})  # fmt: skip
    assert made.status_code == 200, made.text
    return str(made.json()["id"])


def run_task(server: ServerProcess, upstream: FakeUpstreamHandle) -> str:
    """A two-step tool task on the bot route (a 0.3 s tool wait between): its id."""
    auth = {"authorization": f"Bearer {ADMIN}", "x-inferline-task-id": "task-ui"}
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "look it up"}]
    upstream.script("partner", {"kind": "tool_call", "name": "lookup", "arguments": "{}"})
    url = f"{server.base_url}/v1/chat/completions"
    first = httpx.post(url, headers=auth, timeout=60,
                       json={"model": "bot", "messages": messages, "tools": tools})  # fmt: skip
    message = first.json()["choices"][0]["message"]
    time.sleep(0.3)  # the tool runs
    messages += [message, {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"],
                           "content": "found"}]  # fmt: skip
    second = httpx.post(f"{server.base_url}/v1/chat/completions", headers=auth, timeout=60,
                        json={"model": "bot", "messages": messages, "tools": tools})  # fmt: skip
    assert second.status_code == 200, second.text
    outcome = httpx.post(f"{server.base_url}/v1/tasks/task-ui/outcome", json={"success": True},
                         headers={"authorization": f"Bearer {ADMIN}"})  # fmt: skip
    assert outcome.status_code == 200, outcome.text
    return "task-ui"


def test_every_page_loads_and_script_stays_text(
    chrome: Any, server: ServerProcess, upstream: FakeUpstreamHandle
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    user = _key(server, "user")
    review_id, request_id = open_case(server, user, upstream)
    batch_id = start_batch(server)
    task_id = run_task(server, upstream)
    time.sleep(1.0)  # the log writer's flush
    sign_in(chrome, server, ADMIN)
    pages = (("/ui", "overview"), ("/ui/traces", "traces"), (f"/ui/traces/{request_id}", "trace"),
             ("/ui/prompts", "prompts"), ("/ui/prompts/greet", "prompt"), ("/ui/evals", "evals"),
             ("/ui/reviews", "reviews"), ("/ui/batches", "batches"),
             ("/ui/keys", "keys"))  # fmt: skip
    for path, shot in pages:
        visit(chrome, f"{server.base_url}{path}", shot)
        assert chrome.execute_script("return window.pwned") is None
    visit(chrome, f"{server.base_url}/ui/tasks/{task_id}", "task")
    assert len(chrome.find_elements(By.CSS_SELECTOR, ".timeline .bar.attempt")) == 2
    assert len(chrome.find_elements(By.CSS_SELECTOR, ".timeline .bar.tool")) == 1
    visit(chrome, f"{server.base_url}/ui/batches", "batches")
    assert batch_id in chrome.find_element(By.TAG_NAME, "main").text
    visit(chrome, f"{server.base_url}/ui?window=5m", "overview")
    WebDriverWait(chrome, 10).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#charts canvas")) == 5
    )
    main = chrome.find_element(By.TAG_NAME, "main").text
    assert "agent" in main and "Tasks" in main  # a route's row; the tool task's route
    tasks = chrome.find_element(By.XPATH, "//h2[text()='Tasks']/following-sibling::table[1]")
    assert "bot 1 1 100.0%" in tasks.text  # one task, judged a success, its cost per success
    chrome.save_screenshot(str(SHOTS / "overview.png"))
    visit(chrome, f"{server.base_url}/ui/traces/{request_id}", "trace")
    assert not chrome.find_elements(By.ID, "bold")  # the model's HTML is not markup
    assert EVIL.replace('"', '\\"') in chrome.find_element(By.TAG_NAME, "main").text
    visit(chrome, f"{server.base_url}/ui/reviews?case={review_id}", "review-case")
    assert not chrome.find_elements(By.ID, "bold") and "window.pwned" in chrome.page_source


def test_a_reviewer_approves_with_the_keyboard_and_the_client_sees_it(
    chrome: Any, server: ServerProcess, upstream: FakeUpstreamHandle
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    user, reviewer = _key(server, "user"), _key(server, "reviewer")
    review_id, _ = open_case(server, user, upstream)
    sign_in(chrome, server, reviewer)
    visit(chrome, f"{server.base_url}/ui/reviews?case={review_id}", "reviews-reviewer")
    body = chrome.find_element(By.TAG_NAME, "body")
    body.send_keys("c")  # into the comment
    chrome.switch_to.active_element.send_keys("fine by me", Keys.ENTER)
    body.send_keys("a")  # approve
    deadline = time.monotonic() + 10
    while "approved" not in chrome.page_source and time.monotonic() < deadline:
        time.sleep(0.1)
    poll = httpx.get(f"{server.base_url}/v1/reviews/{review_id}",
                     headers={"authorization": f"Bearer {user}"}).json()  # fmt: skip
    assert poll["status"] == "approved" and poll["comment"] == "fine by me"
    (call,) = poll["result"]["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "refund"


def _version_used(server: ServerProcess) -> int:
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json={
        "prompt": {"id": "greet"}, "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4}, headers={"authorization": f"Bearer {ADMIN}"}, timeout=60)  # fmt: skip
    assert response.status_code == 200, response.text
    url = f"{server.base_url}/v1/traces/{response.headers['x-request-id']}"
    for _ in range(50):
        found = httpx.get(url, headers={"authorization": f"Bearer {ADMIN}"})
        if found.status_code == 200:
            return int(found.json()["prompt"]["version"])
        time.sleep(0.1)
    raise AssertionError("no trace")


def test_moving_a_label_back_in_the_ui_changes_the_version_used(
    chrome: Any, server: ServerProcess
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    label = {"label": "production", "version": 2}
    httpx.post(f"{server.base_url}/v1/prompts/greet/labels", json=label,
               headers={"authorization": f"Bearer {ADMIN}"}).raise_for_status()  # fmt: skip
    assert _version_used(server) == 2
    sign_in(chrome, server, ADMIN)
    visit(chrome, f"{server.base_url}/ui/prompts/greet", "prompt-before")
    Select(chrome.find_element(By.CSS_SELECTOR, "select[name=version]")).select_by_value("1")
    chrome.find_element(By.ID, "move-production").click()
    WebDriverWait(chrome, 10).until(lambda d: d.find_elements(By.ID, "confirm"))  # asks first
    chrome.save_screenshot(str(SHOTS / "prompt-confirm.png"))
    assert _version_used(server) == 2  # nothing moved yet
    chrome.find_element(By.ID, "confirm-move").click()
    WebDriverWait(chrome, 10).until(lambda d: "confirm=" not in d.current_url
                                    and not d.find_elements(By.ID, "confirm"))  # fmt: skip
    assert _version_used(server) == 1


def test_csrf_and_roles(chrome: Any, server: ServerProcess) -> None:
    viewer = _key(server, "user")
    sign_in(chrome, server, viewer)
    visit(chrome, f"{server.base_url}/ui/keys", "keys-viewer", refused=True)
    assert "needs the admin role" in chrome.page_source
    visit(chrome, f"{server.base_url}/ui/reviews", "reviews-viewer", refused=True)
    assert "needs the reviewer role" in chrome.page_source
    # a cross-site form: the session cookie but no token (SameSite aside)
    with httpx.Client(base_url=server.base_url) as client:
        login = client.post("/ui/login", data={"key": ADMIN})
        assert login.status_code == 303
        move = {"label": "production", "version": "2", "confirmed": "yes"}
        refused = client.post("/ui/prompts/greet/labels", data=move)
        assert refused.status_code == 403 and "CSRF" in refused.text
        page = client.get("/ui/prompts/greet").text
        token = page.split('name="csrf" value="')[1].split('"')[0]
        done = client.post("/ui/prompts/greet/labels", data={
            "label": "production", "version": "2", "confirmed": "yes", "csrf": token})  # fmt: skip
        assert done.status_code == 303
    assert httpx.get(f"{server.base_url}/ui/traces").status_code in (303, 307)  # no session
