"""Screenshot of the chat page with real conversations, for the README (docs/chat-page.png).

Either point it at a running server:
    python scripts/screenshot_page.py --url http://127.0.0.1:8000 --api-key KEY
or let it start `homegrown serve` on a run or checkpoint (with a throwaway conversation database) and stop it:
    python scripts/screenshot_page.py --run runs/small
SmolLM2's picture (docs/chat-page-smollm2.png), greedy, two questions in one conversation:
    python scripts/screenshot_page.py --run runs/smol --one-chat --temperature 0 --max-model-len 2048 \
        --out docs/chat-page-smollm2.png \
        --prompt "What is the capital of France?" --prompt "Give me three tips for writing clear Python code."

Each prompt is typed into the page in its own new chat, exactly as a user would, and the reply streams from
the model; the last chat stays open for the picture. Uses Debian's chromium through Playwright.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from homegrown.serve.launch import ServerProcess, launch

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DEFAULT_PROMPTS = ["How do I install a package on Debian?", "What does a Python list comprehension do?"]


def start_server(run: Path, db_dir: Path, timeout: float, serve_args: list[str]) -> tuple[ServerProcess, str]:
    key = "sk-" + secrets.token_hex(16)
    srv = launch(run, "--api-key", key, "--db-url", f"sqlite:///{db_dir / 'chats.db'}", *serve_args,
                 log=db_dir / "serve.log", timeout=timeout)
    return srv, key


def shoot(url: str, key: str, prompts: list[str], out: Path, width: int, height: int, chromium: str,
          one_chat: bool = False, temperature: float | None = None) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1,
                                      color_scheme="light", base_url=url)
        context.set_default_timeout(300_000)
        page = context.new_page()
        page.add_init_script(f"localStorage.setItem('homegrown.apiKey', {key!r})")
        if temperature is not None:  # the page's own setting (as its slider stores it): 0 = greedy, the same picture
            settings = json.dumps({"temperature": temperature})
            page.add_init_script(f"localStorage.setItem('homegrown.settings', {settings!r})")
        page.goto("/")
        page.wait_for_selector("#app[data-ready=true]")
        for i, prompt in enumerate(prompts):
            if i == 0 or not one_chat:
                page.click("#new-chat")
            page.fill("#prompt", prompt)
            page.press("#prompt", "Enter")
            page.locator("#stop").wait_for(state="visible")
            page.locator("#stop").wait_for(state="hidden")
        page.locator(".message.assistant .content").last.wait_for()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp.png")
        page.screenshot(path=str(tmp))
        os.replace(tmp, out)  # never leave a half-written picture under the real name
        browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="base URL of a running homegrown serve")
    where.add_argument("--run", type=Path, help="run directory or checkpoint to serve for the picture")
    ap.add_argument("--api-key", default="", help="the server's API key (with --url)")
    ap.add_argument("--prompt", action="append", help="a message to send, each in a new chat (repeatable)")
    ap.add_argument("--one-chat", action="store_true", help="send every prompt in one conversation")
    ap.add_argument("--temperature", type=float, help="the page's temperature setting (0: greedy replies)")
    ap.add_argument("--max-model-len", type=int, help="with --run: the served context (a smaller KV cache)")
    ap.add_argument("--out", type=Path, default=Path("docs/chat-page.png"))
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=760)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--start-timeout", type=float, default=300.0, help="seconds to wait for the server to load")
    args = ap.parse_args()

    prompts = args.prompt or DEFAULT_PROMPTS
    if args.url:
        shoot(args.url.rstrip("/"), args.api_key, prompts, args.out, args.width, args.height, args.chromium,
              args.one_chat, args.temperature)
    else:
        with tempfile.TemporaryDirectory(prefix="homegrown-shot-") as db_dir:
            serve_args = ["--max-model-len", str(args.max_model_len)] if args.max_model_len else []
            srv, key = start_server(args.run, Path(db_dir), args.start_timeout, serve_args)
            try:
                shoot(srv.base_url, key, prompts, args.out, args.width, args.height, args.chromium, args.one_chat,
                      args.temperature)
            finally:
                srv.stop()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
