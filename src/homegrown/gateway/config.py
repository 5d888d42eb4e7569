"""The gateway's YAML configuration as pydantic models: every field validated, every unknown key refused by name
(a typo such as `wieght:` must not silently drop a setting), and the only place the gateway's defaults live.

A minimal file::

    backends:
      provider: {base_url: https://api.openai.com/v1, model: gpt-4o, api_key_env: OPENAI_API_KEY,
                 price: {input_per_1m: 2.5, output_per_1m: 10}}
      inhouse:  {base_url: http://127.0.0.1:8000/v1, model: small, price: {per_gpu_hour: 2.0}}
    routes:
      assistant:
        backends: [{backend: provider, weight: 95}, {backend: inhouse, weight: 5}]

A route's `shadow:` and `promotion:` sections and the gateway's `judge:` and `flywheel:` sections are the models
of judging_config.py. The routing weights a route starts with are `RouteConfig.backends[*].weight`; a route with
`promotion:` has its split set by the ladder instead (at run time, through `Gateway.set_weights`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from homegrown.errors import HomegrownError
from homegrown.gateway.judging_config import FlywheelConfig, JudgeConfig, PromotionConfig, ShadowConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Timeouts(_Strict):
    """Seconds. `first_token_s` bounds a stream's wait for its first token (then the next backend is tried);
    `read_s` bounds every later wait between chunks (then the stream is ended with an error event);
    `total_s` bounds a whole non-streaming call; `pool_s` is how long a request waits for one of the backend's
    `max_concurrency` connections before it counts as a timeout and falls back."""

    connect_s: float = Field(5.0, gt=0)
    read_s: float = Field(60.0, gt=0)
    first_token_s: float = Field(30.0, gt=0)
    total_s: float = Field(300.0, gt=0)
    pool_s: float = Field(10.0, gt=0)


class Price(_Strict):
    """What a backend costs. A provider bills tokens (`input_per_1m`, `output_per_1m`, USD per million); an
    in-house server bills time: `per_gpu_hour` is charged for the time a request holds one of the backend's
    `max_concurrency` slots (latency / max_concurrency of a GPU-hour), an estimate of a fully used GPU's cost
    per request; `per_request` is a flat fee. They add up."""

    input_per_1m: float = Field(0.0, ge=0)
    output_per_1m: float = Field(0.0, ge=0)
    per_request: float = Field(0.0, ge=0)
    per_gpu_hour: float = Field(0.0, ge=0)


class BreakerConfig(_Strict):
    """Circuit breaker: `failures` consecutive backend failures open it; after `cooldown_s` one probe request is
    let through (half-open); its success closes the breaker, its failure opens it for another cooldown."""

    failures: int = Field(5, ge=1)
    cooldown_s: float = Field(30.0, gt=0)


class BackendConfig(_Strict):
    """One OpenAI-compatible server: `base_url` ends in /v1; `model` is the name it serves (sent upstream in
    place of the route's public name); the key is read from the environment variable `api_key_env` at start."""

    base_url: str
    model: str
    api_key_env: str | None = None
    timeouts: Timeouts = Field(default_factory=Timeouts)
    max_concurrency: int = Field(64, ge=1)
    context_length: int | None = Field(None, ge=1, description="Tokens; a context-length error moves the request "
                                                               "to a fallback backend with a larger one.")
    price: Price = Field(default_factory=Price)
    breaker: BreakerConfig | None = None

    @model_validator(mode="after")
    def _url(self) -> BackendConfig:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        self.base_url = self.base_url.rstrip("/")
        return self


class WeightedBackend(_Strict):
    backend: str
    weight: float = Field(1.0, ge=0)


class RouteConfig(_Strict):
    """A public model name → backends. The first attempt goes to one of `backends` by weight (sticky per
    user/conversation when `sticky`); on a failure that is the backend's fault the request moves along
    `fallback` (default: the route's other backends, in the order listed). Backends named only in `fallback`
    take no primary traffic."""

    backends: list[WeightedBackend] = Field(min_length=1)
    fallback: list[str] | None = None
    sticky: bool = True
    shadow: ShadowConfig | None = None
    promotion: PromotionConfig | None = None

    @model_validator(mode="after")
    def _some_weight(self) -> RouteConfig:
        names = [b.backend for b in self.backends]
        if len(set(names)) != len(names):
            raise ValueError(f"a backend is listed twice in backends: {names}")
        if sum(b.weight for b in self.backends) <= 0:
            raise ValueError("at least one backend needs a weight above 0")
        return self


class RateLimit(_Strict):
    requests: int = Field(ge=1)
    per_s: float = Field(60.0, gt=0)


class TokenBudget(_Strict):
    tokens: int = Field(ge=1)
    per_s: float = Field(86400.0, gt=0)


class KeyConfig(_Strict):
    """A client key, read from the environment variable `key_env`. `log: false` opts its traffic out of the
    request log entirely (accounting still counts it)."""

    name: str
    key_env: str
    rate: RateLimit | None = None
    budget: TokenBudget | None = None
    log: bool = True


class LogConfig(_Strict):
    """The request log. `store_texts: false` keeps only the numbers (no prompt or reply, even scrubbed);
    rows older than `retention_days` are deleted at start and every hour."""

    db_url: str = "sqlite:///gateway.sqlite"
    retention_days: float = Field(30.0, gt=0)
    store_texts: bool = True


class ListenConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)


class GatewayConfig(_Strict):
    listen: ListenConfig = Field(default_factory=ListenConfig)
    backends: dict[str, BackendConfig] = Field(min_length=1)
    routes: dict[str, RouteConfig] = Field(min_length=1)
    keys: list[KeyConfig] = Field(default_factory=list, description="Empty: the gateway takes every request "
                                                                    "(no Authorization checked).")
    log: LogConfig = Field(default_factory=LogConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig, description="Default for every backend.")
    judge: JudgeConfig | None = None
    flywheel: FlywheelConfig = Field(default_factory=FlywheelConfig)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        for route, rc in self.routes.items():
            for name in [b.backend for b in rc.backends] + (rc.fallback or []):
                if name not in self.backends:
                    raise ValueError(f"route {route!r} names backend {name!r}, which is not under backends "
                                     f"({', '.join(self.backends)})")
        names = [k.name for k in self.keys]
        if len(set(names)) != len(names):
            raise ValueError(f"two keys share a name: {names}")
        return self

    @model_validator(mode="after")
    def _judging_references(self) -> GatewayConfig:
        """Shadow pairs, the judge and the flywheel name backends that exist; promotion has what it needs."""
        for route, rc in self.routes.items():
            if rc.promotion is not None and rc.shadow is None:
                raise ValueError(f"route {route!r}: promotion needs a shadow: section (candidate, incumbent, "
                                 "percent) to collect judged pairs")
            if rc.promotion is not None and self.judge is None:
                raise ValueError(f"route {route!r}: promotion needs verdicts; add a judge: section naming the "
                                 "backend that judges")
            if rc.shadow is not None:
                for role in ("candidate", "incumbent"):
                    name = getattr(rc.shadow, role)
                    if name not in self.backends:
                        raise ValueError(f"route {route!r}: shadow {role} {name!r} is not under backends "
                                         f"({', '.join(self.backends)})")
        named = ([self.judge.backend] if self.judge else []) + (self.flywheel.backends or [])
        for name in named:
            if name not in self.backends:
                raise ValueError(f"backend {name!r} (judge or flywheel) is not under backends "
                                 f"({', '.join(self.backends)})")
        return self

    def breaker_of(self, backend: str) -> BreakerConfig:
        return self.backends[backend].breaker or self.breaker


def parse_config(data: Any, where: str = "the gateway config") -> GatewayConfig:
    if not isinstance(data, dict):
        raise HomegrownError(f"{where} must be a mapping with backends: and routes:, got {type(data).__name__}")
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        at = ".".join(str(p) for p in first["loc"]) or "top level"
        msg = first["msg"]
        if first["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling against the README's gateway section)"
        raise HomegrownError(f"{where}: {at}: {msg}") from e


def load_config(path: Path) -> GatewayConfig:
    """Read and validate a gateway YAML file; every problem is a HomegrownError naming the file and the key.
    A relative SQLite path in log.db_url is taken relative to the file, not to wherever the gateway starts."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise HomegrownError(f"cannot read the gateway config {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise HomegrownError(f"{path} is not valid YAML: {e}") from e
    cfg = parse_config(data, str(path))
    prefix = "sqlite:///"
    db = cfg.log.db_url
    if db.startswith(prefix) and db[len(prefix):] not in ("", ":memory:") and not Path(db[len(prefix):]).is_absolute():
        cfg.log.db_url = prefix + str(path.resolve().parent / db[len(prefix):])
    return cfg
