"""A reference-based judge behind an OpenAI-compatible endpoint: prefers the reply closer to the documentation.

Offline there is no model stronger than the policy to judge it (SmolLM2-135M judging itself answers A or B
nearly at random), but every docqa question comes with the documentation passage it was cut from. This judge
reads `homegrown data pairs`' judging prompt (posttrain/judge.py: the conversation, "Reply A", "Reply B"), looks
the question up in a JSON file {question: reference answer}, and answers "A" or "B" for the reply with the higher
token F1 against that reference (SQuAD's F1, the doc_qa task's metric, homegrown.eval.tasks.token_f1) — or "TIE"
when the two F1s are within `--tie-margin`, or the question is unknown. Its verdicts are explainable (each one is
logged with both F1s), do not depend on which reply is shown first (so both orders always agree; ties are what
`data pairs` drops), and judge one thing: agreement with the docs — not fluency or helpfulness.

    python benchmarks/f1_judge.py --references refs.json --port 8765 [--log verdicts.jsonl]
    # then: homegrown data pairs RUN --judge-url http://127.0.0.1:8765/v1 --judge-model token-f1-reference ...
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from homegrown.eval.tasks import token_f1

MODEL = "token-f1-reference"


def split_judge_prompt(text: str) -> tuple[str, str, str] | None:
    """(last user message, reply A, reply B) from posttrain.judge.judge_messages' user turn, or None."""
    head, sep, rest = text.partition("\n\nReply A:\n")
    a, sep2, rest = rest.rpartition("\n\nReply B:\n")
    if not sep or not sep2:
        return None
    b = rest.rsplit("\n\nWhich reply is better?", 1)[0]
    question = head.rsplit("[user]\n", 1)[-1].split("\n[assistant]\n", 1)[0]
    return question.strip(), a, b


def verdict(references: dict[str, str], text: str, tie_margin: float) -> tuple[str, dict]:
    parts = split_judge_prompt(text)
    if parts is None or parts[0] not in references:
        return "TIE", {"unknown_question": parts[0][:80] if parts else None}
    question, a, b = parts
    fa, fb = token_f1(a, references[question]), token_f1(b, references[question])
    word = "TIE" if abs(fa - fb) < tie_margin else "A" if fa > fb else "B"
    return word, {"question": question, "f1_a": round(fa, 4), "f1_b": round(fb, 4)}


def make_server(references: dict[str, str], port: int, tie_margin: float,
                log: Path | None) -> ThreadingHTTPServer:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
                return
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            user = next((m.get("content", "") for m in reversed(body.get("messages", []))
                         if m.get("role") == "user"), "")
            word, why = verdict(references, user, tie_margin)
            if log is not None:
                with lock, log.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"verdict": word, **why}) + "\n")
            self._send(200, {"id": "f1-judge", "object": "chat.completion", "created": int(time.time()),
                             "model": MODEL, "choices": [{"index": 0, "finish_reason": "stop",
                                                          "message": {"role": "assistant", "content": word}}],
                             "usage": {"prompt_tokens": len(user) // 4, "completion_tokens": 1,
                                       "total_tokens": len(user) // 4 + 1}})

        def log_message(self, *args: object) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--references", type=Path, required=True, help="JSON object {question: reference answer}")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tie-margin", type=float, default=0.05, help="F1 difference below which the verdict is TIE")
    ap.add_argument("--log", type=Path, help="append every verdict with both F1s here (JSONL)")
    args = ap.parse_args()
    server = make_server(json.loads(args.references.read_text()), args.port, args.tie_margin, args.log)
    print(f"f1 judge on http://127.0.0.1:{args.port}/v1", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
