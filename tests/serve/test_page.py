"""The chat page end to end in real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright)
against the real `homegrown serve` on loopback: API-key prompt, a streamed reply, stop, reload, rename,
delete, a narrow window, and the Markdown renderer's escaping."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.serve.conftest import FORCED_TOKEN

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (see pyproject.toml)")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Records the reply's length at every DOM change, so the test can see it grow while it streams.
WATCH_REPLY = """
window.__replyLengths = [];
new MutationObserver(() => {
  const nodes = document.querySelectorAll('.message.assistant .content');
  const last = nodes[nodes.length - 1];
  if (last) window.__replyLengths.push(last.textContent.length);
}).observe(document, {subtree: true, childList: true, characterData: true});
"""

pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None and shutil.which("chromium") is None,
                                reason="needs Debian chromium: bash scripts/install_chromium.sh")


@pytest.fixture(scope="module")
def server(defaults_server: Any) -> Any:
    """The page builds its own requests, so the server's --generation-config makes every reply run to the end
    of the context and be FORCED_TOKEN repeated: long enough to watch stream and to stop, whatever an untrained
    model would sample."""
    return defaults_server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=shutil.which(CHROMIUM) or shutil.which("chromium"), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, server: Any) -> Iterator[Any]:
    """A fresh browser context (empty localStorage) at a desktop size."""
    context = browser.new_context(viewport={"width": 1200, "height": 800}, base_url=server.base_url)
    context.set_default_timeout(30_000)
    pg = context.new_page()
    pg.add_init_script(WATCH_REPLY)
    yield pg
    context.close()


def _api(server: Any) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {server.api_key}"}, timeout=30)


def _enter_key(page: Any, key: str) -> None:
    dialog = page.locator("#api-key-dialog")
    dialog.wait_for(state="visible")
    page.fill("#api-key-input", key)
    page.click("#api-key-save")


def _throttle(page: Any, bytes_per_s: int) -> None:
    """Slow the browser's downloads the way a slow network would, so a reply streams over a few seconds
    even from a tiny model on a fast machine: long enough to watch it grow and to press Stop mid-way."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0,
                                                  "downloadThroughput": bytes_per_s, "uploadThroughput": -1})


def _open_with_key(page: Any, server: Any, path: str = "/") -> None:
    page.goto(path)
    _enter_key(page, server.api_key)
    page.wait_for_selector("#app[data-ready=true]")


def test_chat_streams_a_reply_and_keeps_it_after_reload(page: Any, server: Any) -> None:
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto("/")
    # A wrong key is refused and asked for again, with a message that says so.
    _enter_key(page, "sk-wrong-" + uuid.uuid4().hex)
    page.wait_for_function("document.getElementById('api-key-reason').textContent.includes('refused')")
    _enter_key(page, server.api_key)
    page.wait_for_selector("#app[data-ready=true]")
    assert page.locator("#model-select option").count() >= 1, "the model picker is filled from /v1/models"

    _throttle(page, 20_000)
    prompt = f"Tell me about Debian packages {uuid.uuid4().hex[:6]}"
    page.fill("#prompt", prompt)
    page.press("#prompt", "Enter")
    page.locator("#stop").wait_for(state="visible")
    assert page.locator("#send").is_hidden(), "Send turns into Stop while the reply streams"
    page.locator("#stop").wait_for(state="hidden", timeout=120_000)
    assert page.locator("#send").is_visible()

    reply = page.locator(".message.assistant .content").last
    shown = reply.inner_text().strip()
    assert shown and set(shown) == set(FORCED_TOKEN), f"the whole reply is rendered: {shown!r}"
    lengths = [n for n in page.evaluate("window.__replyLengths") if n > 0]
    assert len(set(lengths)) >= 2, f"the reply should appear piece by piece while streaming, saw lengths {lengths}"
    assert page.inner_text(".message.user .content") == prompt

    # Both messages were stored; the page remembers the open conversation in the URL.
    conv_id = page.evaluate("location.hash.slice(1)")
    with _api(server) as api:
        stored = api.get(f"/api/conversations/{conv_id}").json()
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"]
    assert stored["messages"][0]["content"] == prompt and stored["messages"][1]["content"].strip()
    assert stored["title"] == prompt

    page.reload()
    page.wait_for_selector("#app[data-ready=true]")
    assert page.locator("#api-key-dialog").is_hidden(), "the key is kept in localStorage"
    page.locator(".message.assistant .content").first.wait_for()
    assert page.inner_text(".message.user .content") == prompt
    assert page.locator(".message.assistant .content").first.inner_text().strip() == shown

    # From a blank page, the conversation is in the list and opens with its messages.
    page.goto("/")
    page.wait_for_selector("#app[data-ready=true]")
    assert page.locator(".message").count() == 0
    page.locator(f'.conversation[data-id="{conv_id}"] .open').click()
    page.locator(".message.assistant .content").first.wait_for()
    assert page.inner_text(".message.user .content") == prompt
    assert page.locator(".conversation.active .open").inner_text() == prompt
    outside = [u for u in requested if not u.startswith((server.base_url + "/", "data:"))]
    assert not outside, f"the page must load nothing from outside the server (no CDN): {outside}"
    assert any(u.endswith("/app.js") for u in requested) and any("/v1/chat/completions" in u for u in requested)


def test_stop_keeps_the_partial_reply(page: Any, server: Any) -> None:
    _open_with_key(page, server)
    _throttle(page, 1_500)
    page.fill("#prompt", "Write a long story about the Python standard library.")
    page.press("#prompt", "Enter")
    page.wait_for_function("""() => {
        const reply = document.querySelector('.message.assistant .content');
        const streaming = !document.getElementById('stop').hidden;
        return (streaming && reply && reply.textContent.length > 0) || (reply && !streaming);
    }""", timeout=120_000)
    reply = page.locator(".message.assistant .content").last
    assert page.locator("#stop").is_visible(), f"the reply ended before Stop could be pressed: {reply.inner_text()!r}"
    page.click("#stop", timeout=5_000)
    page.locator("#stop").wait_for(state="hidden")
    assert page.locator("#send").is_visible()
    conv_id = page.evaluate("location.hash.slice(1)")
    shown = page.locator(".message.assistant .content").last.inner_text()
    assert "Stopped." in shown
    partial = shown.replace("Stopped.", "").strip()
    assert partial
    # Whatever arrived before the stop is saved as the assistant's message.
    deadline = time.monotonic() + 60  # a bound for a stuck page, not a speed claim
    while True:
        with _api(server) as api:
            msgs = api.get(f"/api/conversations/{conv_id}").json()["messages"]
        if len(msgs) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    assert msgs[1]["content"].strip()
    saved_as_shown = page.evaluate("""(saved) => {
        const all = document.querySelectorAll('.message.assistant .content');
        const shown = all[all.length - 1].cloneNode(true);
        shown.querySelector('.stopped').remove();
        return shown.innerHTML === window.renderMarkdown(saved);
    }""", msgs[1]["content"])
    assert saved_as_shown, "exactly the part that was shown is saved"


def test_rename_and_delete_from_the_list(page: Any, server: Any) -> None:
    with _api(server) as api:
        keep = api.post("/api/conversations", json={"title": "Keep me"}).json()
        api.post(f"/api/conversations/{keep['id']}/messages", json={"role": "user", "content": "first question"})
        api.post(f"/api/conversations/{keep['id']}/messages",
                 json={"role": "assistant", "content": "Use `apt`:\n\n```sh\napt install python3\n```"})
        drop = api.post("/api/conversations", json={"title": "Drop me"}).json()
    _open_with_key(page, server, f"/#{keep['id']}")
    page.locator(".codeblock pre code").wait_for()
    assert page.inner_text(".codeblock pre code") == "apt install python3", "fenced code is rendered as a block"
    assert page.inner_text(".message.assistant .content p code") == "apt"
    page.click(".codeblock .copy")
    page.locator(".codeblock .copy", has_text="Copied").wait_for()

    item = page.locator(f'.conversation[data-id="{keep["id"]}"]')
    item.hover()
    item.locator(".rename").click()
    page.fill(".conversation input.rename-input", "Renamed in the browser")
    page.press(".conversation input.rename-input", "Enter")
    page.locator(f'.conversation[data-id="{keep["id"]}"] .open', has_text="Renamed in the browser").wait_for()
    assert page.inner_text("#chat-title") == "Renamed in the browser"

    row = page.locator(f'.conversation[data-id="{drop["id"]}"]')
    row.hover()
    row.locator(".delete").click()
    page.locator("#delete-dialog").wait_for(state="visible")
    page.click("#delete-cancel")
    assert row.count() == 1, "cancel keeps it"
    row.hover()
    row.locator(".delete").click()
    page.click("#delete-confirm")
    row.wait_for(state="detached")

    with _api(server) as api:
        assert api.get(f"/api/conversations/{keep['id']}").json()["title"] == "Renamed in the browser"
        assert api.get(f"/api/conversations/{drop['id']}").status_code == 404


def test_settings_are_saved_with_the_conversation(page: Any, server: Any) -> None:
    with _api(server) as api:
        conv = api.post("/api/conversations", json={"title": "Settings"}).json()
    _open_with_key(page, server, f"/#{conv['id']}")
    page.click("#settings-button")
    page.fill("#system-prompt", "Answer in one sentence.")
    page.locator("#system-prompt").blur()
    page.eval_on_selector("#temperature", """(input) => {
        input.value = '1.3';
        input.dispatchEvent(new Event('input'));
        input.dispatchEvent(new Event('change'));
    }""")
    assert page.inner_text("#temperature-value") == "1.3"
    deadline = time.monotonic() + 60  # a bound for a stuck page, not a speed claim
    with _api(server) as api:
        while True:
            got = api.get(f"/api/conversations/{conv['id']}").json()
            if (got["system_prompt"], got["temperature"]) == ("Answer in one sentence.", 1.3):
                break
            assert time.monotonic() < deadline, f"settings not saved: {got}"
            time.sleep(0.1)


def test_narrow_window(browser: Any, server: Any) -> None:
    with _api(server) as api:
        conv = api.post("/api/conversations", json={"title": "On a phone"}).json()
    context = browser.new_context(viewport={"width": 390, "height": 740}, base_url=server.base_url)
    try:
        page = context.new_page()
        _open_with_key(page, server)
        sidebar = page.locator("#sidebar")
        assert sidebar.bounding_box()["x"] + sidebar.bounding_box()["width"] <= 0, "the list starts hidden"
        composer = page.locator("#prompt").bounding_box()
        assert composer["x"] >= 0 and composer["x"] + composer["width"] <= 390, "the composer fits the width"
        page.click("#sidebar-toggle")
        page.wait_for_function("document.getElementById('sidebar').getBoundingClientRect().x >= 0")
        page.locator(f'.conversation[data-id="{conv["id"]}"] .open').click()
        page.wait_for_function("document.getElementById('sidebar').getBoundingClientRect().right <= 0")
        assert page.evaluate("location.hash") == f"#{conv['id']}"
    finally:
        context.close()


def test_markdown_renderer_escapes_html(page: Any, server: Any) -> None:
    _open_with_key(page, server)
    source = ("# Title\n\nSome **bold**, *italic* and `<b>code</b>`.\n\n"
              "<img src=x onerror=\"window.__xss=1\"> <script>window.__xss=2</script>\n\n"
              "[bad](javascript:window.__xss=3) [good](https://example.org/a?b=1&c=2)\n\n"
              "- one\n- two\n\n1. first\n2. second\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
              "```python\nprint('<hi>')\n```\n\n```js\nunclosed fence while streaming <svg onload=x>")
    result = page.evaluate("""(src) => {
        const box = document.createElement('div');
        box.innerHTML = window.renderMarkdown(src);
        return {
          tags: [...box.querySelectorAll('*')].map(n => n.tagName.toLowerCase()),
          links: [...box.querySelectorAll('a')].map(a => a.getAttribute('href')),
          code: [...box.querySelectorAll('pre code')].map(c => c.textContent),
          text: box.textContent,
          xss: window.__xss || null,
        };
    }""", source)
    assert not {"img", "script", "svg"} & set(result["tags"]), result["tags"]
    assert {"h1", "strong", "em", "ul", "ol", "table", "pre"} <= set(result["tags"])
    assert result["links"] == ["https://example.org/a?b=1&c=2"], "only http(s) links become anchors"
    assert result["code"] == ["print('<hi>')", "unclosed fence while streaming <svg onload=x>"]
    assert "<img src=x" in result["text"] and "<script>" in result["text"], "HTML is shown as text"
    assert result["xss"] is None


def _send(page: Any, text: str) -> str:
    """Send `text` from the composer, wait for the whole reply, return the conversation's id."""
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")
    page.locator(".message.assistant .content").last.wait_for()
    page.locator("#stop").wait_for(state="hidden", timeout=120_000)
    page.wait_for_function("location.hash.length > 1")
    return page.evaluate("location.hash.slice(1)")


def test_two_users_see_only_their_own_conversations(browser: Any, server: Any) -> None:
    """Two browsers, two users' keys (made by the server's admin over /api/keys): neither sees the other's
    conversations, not in the list and not by opening its id; switching keys in one browser switches user."""
    tag = uuid.uuid4().hex[:6]
    with _api(server) as admin:
        keys = {user: admin.post("/api/keys", json={"user": f"{user}-{tag}"}).json()["key"]
                for user in ("alice", "bob")}
    contexts = [browser.new_context(viewport={"width": 1200, "height": 800}, base_url=server.base_url)
                for _ in range(2)]
    try:
        alice, bob = (context.new_page() for context in contexts)
        for pg, user in ((alice, "alice"), (bob, "bob")):
            pg.context.set_default_timeout(30_000)
            pg.goto("/")
            _enter_key(pg, keys[user])
            pg.wait_for_selector("#app[data-ready=true]")
            assert pg.inner_text("#account-user") == f"{user}-{tag}"
        alice_secret = f"alice's secret plan {tag}"
        alice_id = _send(alice, alice_secret)

        bob.reload()
        bob.wait_for_selector("#app[data-ready=true]")
        assert bob.locator(".conversation").count() == 0 and bob.locator("#sidebar-empty").is_visible()
        bob_id = _send(bob, f"bob's question {tag}")
        assert [bob.get_attribute(".conversation", "data-id")] == [bob_id]
        # Bob opening alice's conversation by its id gets "not found", and none of her messages.
        bob.goto("about:blank")  # so the next is a fresh load, not a jump within the page
        bob.goto(f"/#{alice_id}")
        bob.wait_for_selector("#app[data-ready=true]")
        bob.locator(".message .error").wait_for()
        assert "no conversation" in bob.inner_text(".message .error")
        assert alice_secret not in bob.inner_text("body") and bob.evaluate("location.hash") == ""

        alice.reload()
        alice.wait_for_selector("#app[data-ready=true]")
        alice.locator(".message.user .content").wait_for()
        assert alice.inner_text(".message.user .content") == alice_secret
        assert [alice.get_attribute(".conversation", "data-id")] == [alice_id]

        # The same browser with bob's key is bob: his list, nothing of alice's left on screen.
        alice.click("#switch-key")
        with alice.expect_navigation():  # a new user starts from a freshly loaded page
            _enter_key(alice, keys["bob"])
        alice.wait_for_selector("#app[data-ready=true]")
        assert alice.inner_text("#account-user") == f"bob-{tag}"
        alice.locator(f'.conversation[data-id="{bob_id}"]').wait_for()
        assert alice.locator(".conversation").count() == 1 and alice_secret not in alice.inner_text("body")
    finally:
        for context in contexts:
            context.close()
