"""Datasets: versions, files in and out, items from traces and reviewed cases."""

from __future__ import annotations

import json
import threading

import pytest

from inferline.core.errors import InvalidParameterError, NotFoundError
from inferline.evals.items import from_review, from_trace, read_file, split_input, to_csv, to_jsonl
from inferline.evals.reviewed import ReviewedCases
from inferline.store.datasets import DatasetItem, DatasetStore
from inferline.store.reviews import ReviewStore


def _items(*pairs: tuple[str, str]) -> list[DatasetItem]:
    return [DatasetItem(key=k, input=v, expected=v.upper()) for k, v in pairs]


def test_versions_read_back_as_they_were(database) -> None:  # type: ignore[no-untyped-def]
    store = DatasetStore(database)
    first = store.write("qa", _items(("a", "x"), ("b", "y")), source="file")
    assert (first["version"], first["added"], first["removed"], first["changed"]) == (1, 2, 0, True)
    again = store.write("qa", _items(("a", "x"), ("b", "y")), source="file", replace=True)
    assert (again["version"], again["changed"]) == (1, False)  # the same file: no new version
    # replace: b changed, a dropped, c new
    third = store.write("qa", _items(("b", "y2"), ("c", "z")), source="file", replace=True)
    assert (third["version"], third["added"], third["removed"]) == (2, 2, 2)
    assert [(i.key, i.input) for i in store.items("qa", 1)] == [("a", "x"), ("b", "y")]
    assert [(i.key, i.input) for i in store.items("qa")] == [("b", "y2"), ("c", "z")]
    store.write("qa", _items(("d", "w")), source="reviews")  # append keeps the others
    assert [i.key for i in store.items("qa", 3)] == ["b", "c", "d"]
    assert store.catalog()[0]["items"] == 3
    assert [v["source"] for v in store.get("qa")["versions"]] == ["file", "file", "reviews"]
    with pytest.raises(NotFoundError):
        store.items("qa", 4)
    with pytest.raises(NotFoundError):
        store.get("nope")
    with pytest.raises(InvalidParameterError, match="twice"):
        store.write("qa", _items(("a", "1"), ("a", "2")), source="file")


def test_concurrent_appends_get_distinct_versions(database) -> None:  # type: ignore[no-untyped-def]
    store = DatasetStore(database)
    errors: list[BaseException] = []

    def append(n: int) -> None:
        try:
            for j in range(5):
                store.write("race", _items((f"{n}-{j}", "q")), source="reviews")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    info = store.get("race")
    assert info["latest_version"] == 20
    assert [v["version"] for v in info["versions"]] == list(range(1, 21))
    assert len(store.items("race")) == 20


def test_jsonl_and_csv_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(
        '{"id": "1", "input": "What is 2+2?", "expected": "4"}\n\n'
        '{"input": [{"role": "user", "content": "hi"}], "metadata": {"tag": "x"}}\n'
        '{"messages": [{"role": "user", "content": "yo"}]}\n'
        '{"input": {"question": "q?"}, "expected": {"answer": 1}}\n'
    )
    items = read_file(jsonl)
    assert [i.key for i in items][0] == "1" and len(items[1].key) == 16
    assert items[1].metadata == {"tag": "x"} and items[1].source == "d.jsonl:3"
    assert split_input(items[0].input) == ([{"role": "user", "content": "What is 2+2?"}], None)
    assert split_input(items[3].input) == ([], {"question": "q?"})
    assert read_file(jsonl)[1].key == items[1].key  # content ids are stable
    csv_file = tmp_path / "d.csv"
    csv_file.write_text('id,question,expected,metadata.lang\na,"Who, then?",Bob,en\n')
    (row,) = read_file(csv_file)
    assert (row.key, row.input, row.expected, row.metadata) == (
        "a", {"question": "Who, then?"}, "Bob", {"lang": "en"})  # fmt: skip
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "ok"}\n{"input": ""}\n')
    with pytest.raises(InvalidParameterError, match="bad.jsonl:2"):
        read_file(bad)
    exported = to_jsonl(i.as_dict() for i in items)
    assert [json.loads(line)["input"] for line in exported.splitlines()] == [i.input for i in items]
    table = to_csv([items[0].as_dict(), items[3].as_dict()])
    assert table.splitlines()[0] == "id,input,expected,metadata,source"
    assert '"{""question"": ""q?""}"' in table


def _trace(**body: object) -> dict[str, object]:
    return {"id": "chatcmpl-1", "request": body or None, "input": "last message",
            "output": "the answer", "route": "bot", "model": "bot", "prompt": None,
            "timings": {"total_s": 0.5}, "cost_usd": 0.001, "created_at": 1.0,
            "status_code": 200}  # fmt: skip


def test_items_from_traces() -> None:
    messages = [{"role": "user", "content": "hello"}]
    item = from_trace(_trace(model="bot", messages=messages))
    assert item is not None and item.input == messages and item.expected is None
    assert item.metadata["output"] == "the answer" and item.source == "trace:chatcmpl-1"
    prompted = from_trace(
        _trace(model="bot", messages=[], prompt={"id": "p", "variables": {"q": 1}})
    )
    assert prompted is not None and prompted.input == {"q": 1}
    old = from_trace(_trace(), expected_from_output=True)  # logged before request bodies
    assert old is not None and old.input == "last message" and old.expected == "the answer"
    assert from_trace({**_trace(), "input": None}) is None


def _case(review_store: ReviewStore, n: int, route: str = "bot") -> str:
    case = {"id": f"rev_{n}", "request_id": f"r{n}", "trace_id": None, "route": route,
            "key_id": None, "created_at": float(n), "deadline_at": 1e12, "on_expiry": "abstain",
            "check_name": "judge", "score": 0.3,
            "request": {"model": route, "messages": [{"role": "user", "content": f"q{n}"}]},
            "draft": {"message": {"role": "assistant", "content": f"draft {n}"},
                      "finish_reason": "stop"},
            "checks": [], "texts": {"abstain": "I cannot say."}}  # fmt: skip
    review_store.create(case)
    return str(case["id"])


def test_reviewed_cases_flow_into_a_dataset_once(database) -> None:  # type: ignore[no-untyped-def]
    reviews, datasets = ReviewStore(database), DatasetStore(database)
    for n in range(4):
        _case(reviews, n, route="bot" if n < 3 else "other")
    edited = {"decision": "allow", "message": {"role": "assistant", "content": "fixed"}}
    reviews.decide("rev_0", "approved", {"message": {"content": "draft 0"}}, reviewer="k1")
    reviews.decide("rev_1", "edited", edited, reviewer="k1", comment="too long")
    reviews.decide("rev_2", "expired", {"message": {"content": "x"}}, reviewer=None)
    reviews.decide("rev_3", "rejected", {"message": {"content": "no"}}, reviewer="k2")
    sync = ReviewedCases(reviews, datasets)
    assert sync.sync() == 3
    assert ReviewedCases(reviews, datasets).sync() == 0  # a restart adds nothing twice
    bot = {i.key: i for i in datasets.items("reviews/bot")}
    assert set(bot) == {"rev_0", "rev_1"}  # the expired case is nobody's verdict
    assert (bot["rev_0"].expected, bot["rev_0"].metadata["human_label"]) == ("draft 0", 1)
    assert (bot["rev_1"].expected, bot["rev_1"].metadata["human_label"]) == ("fixed", 0)
    assert bot["rev_1"].metadata["comment"] == "too long"
    (other,) = datasets.items("reviews/other")
    assert (other.expected, other.metadata["human_label"]) == (None, 0)
    assert other.input == [{"role": "user", "content": "q3"}]
    _case(reviews, 9)
    reviews.decide("rev_9", "approved", {"message": {"content": "draft 9"}}, reviewer="k1")
    assert sync.sync() == 1 and datasets.get("reviews/bot")["latest_version"] == 2
    assert from_review(reviews.get("rev_2") or {}) is None
