"""Payload masking and chart geometry of the HUD (pure functions)."""

from __future__ import annotations

import json

from dockworker.api.hud.charts import bar_chart
from dockworker.api.hud.masking import mask_payload
from dockworker.api.schemas import FILTERED


def test_json_payload_secret_keys_are_masked_at_any_depth_case_insensitively() -> None:
    payload = {
        "user": "ann",
        "Password": "hunter2",
        "db": {"host": "h", "API_KEY": "k1", "nested": [{"authToken": "t"}, {"plain": 1}]},
        "Credentials": {"anything": "below is masked whole"},
        "count": 3,
    }
    masked = mask_payload(json.dumps(payload))
    shown = json.loads(masked.text)
    assert masked.is_json and masked.masked == 4
    assert shown["user"] == "ann" and shown["count"] == 3 and shown["db"]["host"] == "h"
    assert shown["Password"] == FILTERED and shown["db"]["API_KEY"] == FILTERED
    assert shown["db"]["nested"] == [{"authToken": FILTERED}, {"plain": 1}]
    assert shown["Credentials"] == FILTERED
    assert "hunter2" not in masked.text and "k1" not in masked.text


def test_text_payload_pairs_with_secret_names_are_masked() -> None:
    masked = mask_payload("user=ann&password=hunter2&n=1\nsecret_key: abc\nTOKEN = 'xyz'")
    assert not masked.is_json and masked.masked == 3
    assert "hunter2" not in masked.text and "abc" not in masked.text and "xyz" not in masked.text
    assert "user=ann" in masked.text and "n=1" in masked.text


def test_payloads_without_secrets_are_unchanged() -> None:
    assert mask_payload("just text").text == "just text"
    assert mask_payload("").masked == 0
    assert json.loads(mask_payload('{"a": [1, 2]}').text) == {"a": [1, 2]}


def test_bar_chart_scales_to_the_highest_bar_and_draws_subsets_inside() -> None:
    buckets = [0, 86400, 2 * 86400]
    chart = bar_chart(
        "Tasks",
        buckets,
        86400,
        [("bar-tasks", "tasks", {0: 10.0, 2 * 86400: 5.0}), ("bar-failed", "failed", {0: 5.0})],
        lambda v: f"{v:.0f}",
    )
    tasks = [b for b in chart.bars if b.kind == "bar-tasks"]
    failed = [b for b in chart.bars if b.kind == "bar-failed"]
    assert len(tasks) == 2 and len(failed) == 1  # empty buckets draw nothing
    assert tasks[0].height == 2 * tasks[1].height
    assert failed[0].height * 2 == tasks[0].height and failed[0].x == tasks[0].x
    assert all(b.y + b.height == chart.baseline for b in chart.bars)
    assert chart.total == "15" and chart.y_ticks[-1].text == "10"
    assert tasks[0].title == "1970-01-01: 10 tasks"
    assert [t.anchor for t in chart.x_ticks] == ["start", "middle", "end"]
