"""The shadow/promotion/judge/flywheel sections of gateway.yaml: typos and dangling names are refused by name."""

from __future__ import annotations

from typing import Any

import pytest

from homegrown.errors import HomegrownError
from homegrown.gateway.config import parse_config


def _cfg(**changes: Any) -> dict[str, Any]:
    route = {"backends": [{"backend": "provider", "weight": 100}, {"backend": "inhouse", "weight": 0}],
             "shadow": {"candidate": "inhouse", "incumbent": "provider"}, "promotion": {"ladder": [0, 50, 100]}}
    cfg = {"backends": {n: {"base_url": "http://127.0.0.1:9/v1", "model": n} for n in ("provider", "inhouse", "j")},
           "routes": {"chat": route}, "judge": {"backend": "j"}}
    for key, value in changes.items():
        if key in ("shadow", "promotion"):
            route[key] = value
        else:
            cfg[key] = value
    return cfg


def test_a_full_judging_config_loads_with_its_defaults() -> None:
    cfg = parse_config(_cfg())
    rc = cfg.routes["chat"]
    assert rc.shadow is not None and rc.shadow.percent == 100 and rc.shadow.max_queue == 16
    assert rc.promotion is not None and rc.promotion.threshold == 0.45
    assert cfg.judge is not None and cfg.judge.max_tokens == 512
    assert cfg.flywheel.enabled is False  # training on provider outputs is opt-in


@pytest.mark.parametrize(("changes", "message"), [
    ({"shadow": {"candidate": "inhouse", "incumbent": "provider", "precent": 5}}, "routes.chat.shadow.precent"),
    ({"shadow": {"candidate": "nope", "incumbent": "provider"}}, "shadow candidate 'nope'"),
    ({"shadow": None}, "promotion needs a shadow"),
    ({"judge": None}, "promotion needs verdicts"),
    ({"judge": {"backend": "gone"}}, "'gone' (judge or flywheel)"),
    ({"flywheel": {"enabled": True, "backends": ["gone"]}}, "'gone' (judge or flywheel)"),
    ({"promotion": {"ladder": [0, 100, 50]}}, "strictly increasing"),
    ({"promotion": {"rollback_to": "zero"}}, "rollback_to"),
])
def test_bad_judging_sections_are_refused_by_name(changes: dict, message: str) -> None:
    with pytest.raises(HomegrownError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config(_cfg(**changes))
