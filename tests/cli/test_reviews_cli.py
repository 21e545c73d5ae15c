"""`inferline reviews`: the queue listed, decided cases exported as JSONL test cases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from inferline.cli.main import main
from inferline.core import GenerationRequest
from inferline.core.decisions import CheckOutcome
from inferline.guard import GuardCheck, GuardPolicy, ReviewDesk
from inferline.store import connect, migrate
from inferline.store.reviews import ReviewStore

pytestmark = pytest.mark.anyio
CHECK = GuardCheck("refunds", "tool_call", "tool", "review", tools=("refund",))
CALL = {"id": "c1", "type": "function", "function": {"name": "refund", "arguments": "{}"}}


async def test_list_and_export(tmp_path: Path, capsys: Any) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    database = connect(url)
    migrate(database)
    desk = ReviewDesk(ReviewStore(database))
    policy = GuardPolicy("agent", (CHECK,), abstain_text="No.")
    outcome = CheckOutcome("refunds", "tool_call", "tool", "review", True, None, "refund")
    ids = []
    for i in range(3):
        request = GenerationRequest(f"r{i}", messages=[{"role": "user", "content": f"refund {i}"}],
                                    model="agent")  # fmt: skip
        draft = {"message": {"role": "assistant", "content": None, "tool_calls": [CALL]},
                 "finish_reason": "tool_calls", "usage": {}}  # fmt: skip
        ids.append(await desk.open(policy, CHECK, outcome, request, draft, [outcome], None))
    desk.decide(ids[0], "approve", reviewer="rk")
    desk.decide(ids[1], "reject", reviewer="rk", comment="not eligible")
    assert main(["reviews", "list", "--database-url", url]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 1 and ids[2] in listed[0] and "calls refund" in listed[0]
    out = tmp_path / "cases.jsonl"
    assert main(["reviews", "export", "--database-url", url, "--out", str(out)]) == 0
    cases = [json.loads(line) for line in out.read_text().splitlines()]
    assert [c["verdict"] for c in cases] == ["approved", "rejected"]
    assert cases[0]["expected"]["tool_calls"] == [CALL] and cases[1]["expected"] is None
    assert cases[1]["comment"] == "not eligible"
    assert cases[0]["input"]["messages"] == [{"role": "user", "content": "refund 0"}]
