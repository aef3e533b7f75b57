"""What the dialects' claim statements share: the states, and the first step, finding the
packages with queued tasks by skipping through ``ix_tasks_queue_lane`` one package at a time
(one probe each, however long their queues)."""

from __future__ import annotations

from .transitions import claim_sql

CLAIMABLE, ACTIVE = claim_sql("t")

LANE_INDEX = "ix_tasks_queue_lane"


def packages_cte(tasks_from: str) -> str:
    """``tasks_from``: how the dialect names the tasks table read through the lane index."""
    return f"""
    packages(code_id) AS (
        SELECT (SELECT t.code_id FROM {tasks_from} WHERE {CLAIMABLE} ORDER BY t.code_id LIMIT 1)
        UNION ALL
        SELECT (SELECT t.code_id FROM {tasks_from}
                 WHERE {CLAIMABLE} AND t.code_id > p.code_id ORDER BY t.code_id LIMIT 1)
          FROM packages AS p
         WHERE p.code_id IS NOT NULL
    )"""
