"""`homegrown gateway`: one OpenAI-compatible front over many OpenAI-compatible backends (a provider, our own
`homegrown serve`, vLLM, llama.cpp …), with weighted sticky routes, fallback, circuit breakers, client keys
and budgets, scrubbed SQL request logs and per-backend accounting.

Modules, one job each:

* config.py     the YAML file → validated pydantic models (backends, routes, keys, log); the only place the
                gateway's defaults live.
* store.py      the request log table (SQLAlchemy; SQLite default, Postgres by URL), `RequestRecord`, retention.
* breaker.py    the per-backend circuit breaker (closed → open → half-open → closed), with an injectable clock.
* backends.py   one httpx client per backend: a call either returns the backend's answer or raises
                `BackendError` with a kind (`connect`, `timeout`, `rate_limited`, `server_error`,
                `bad_response`, `context_length`, `misconfigured`) that decides whether to fall back.
* routing.py    route → ordered attempt list: weighted (sticky by hash, otherwise smooth round-robin), then
                the fallback chain; `set_weights` changes a route's split at run time.
* keys.py       client keys, per-key request rate and token budgets.
* accounting.py requests, tokens, errors, p50/p95 latency and cost per route and backend; Prometheus.
* proxy.py      the attempt loop for one request, non-streaming and streaming (the mid-stream rule).
* app.py        the FastAPI app: /v1/models, /v1/chat/completions, /v1/completions, /health, /metrics,
                /gateway/state; `Gateway` (app.state.gateway) is what extensions hold on to.
* server.py     `homegrown gateway --config FILE` under uvicorn; `status.py`: `homegrown gateway status`.

Shadow, judge and promotion (moving the split on evidence), attached by judging.py through the hooks above:

* judging_config.py  the `shadow:`/`promotion:` route sections and the `judge:`/`flywheel:` sections.
* stats.py           win rate with its Wilson interval (ties half), percentiles.
* signals.py         cheap per-pair signals: refusal, empty, truncated, length and latency ratios.
* judge.py           pairwise LLM-as-judge, both orders, flips as ties, unparseable counted.
* shadow.py          the bounded background mirror to the other model of a route's pair.
* promotion.py       the ladder: a pure `decide(evidence)` and the count-driven `Promoter`.
* judging_store.py   shadow pairs, verdicts and decisions in SQL beside the request log.
* judging.py         wires them into a running `Gateway` (after-request hook, set_weights, /gateway/state).
* judging_status.py, report.py   `gateway status`'s judging lines; `homegrown gateway report` (Markdown + PNG).
"""
