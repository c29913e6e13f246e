"""Corpora, packing and the batch plan that makes resume and DDP deterministic."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from model.train.data import (IGNORE_INDEX, BatchPlan, DataError, TokenDataset, completion_dataset, eval_batches,
                              is_completion_file, iter_documents, pack_documents)


def test_text_documents_are_blank_line_separated(tmp_path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("first doc\nline two\n\n\nsecond\n\nthird", encoding="utf-8")
    assert list(iter_documents(str(path))) == ["first doc\nline two", "second", "third"]


def test_jsonl_bad_lines_are_reported_by_number(tmp_path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\n{"txt": "no"}\nnot json\n{"text": "fine"}\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        list(iter_documents(str(path)))
    assert [n for n, _ in err.value.problems] == [2, 3]


def test_packing_joins_documents_with_eos_and_cuts_full_rows(tmp_path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in ["abc", "de", "fghij"]), encoding="utf-8")
    packed, tail = pack_documents([str(path)], lambda s: [ord(c) for c in s], eos_id=0, max_len=4)
    stream = [ord(c) for c in "abc"] + [0] + [ord(c) for c in "de"] + [0] + [ord(c) for c in "fghij"] + [0]
    assert packed.tolist() == [stream[0:4], stream[4:8], stream[8:12]] and tail == len(stream) - 12


def test_completion_items_score_only_the_completion_and_eos(tmp_path) -> None:
    path = tmp_path / "heldout.jsonl"
    path.write_text(json.dumps({"prompt": "ab =", "completion": "ba"}) + "\n"
                    + json.dumps({"prompt": "c =", "completion": "c"}) + "\n", encoding="utf-8")
    assert is_completion_file(str(path))
    data = completion_dataset([str(path)], lambda s: [ord(c) for c in s], eos_id=0, max_len=16)
    assert data.input_ids[0].tolist() == [ord(c) for c in "ab = ba"] + [0]
    assert data.labels[0].tolist() == [IGNORE_INDEX] * 4 + [ord(c) for c in " ba"] + [0]
    assert data.num_label_tokens(1) == len(" c") + 1  # the separating space, the completion, eos
    text = tmp_path / "corpus.jsonl"
    text.write_text(json.dumps({"text": "plain"}) + "\n", encoding="utf-8")
    assert not is_completion_file(str(text))


def test_completion_items_that_do_not_fit_are_reported_by_number(tmp_path) -> None:
    path = tmp_path / "heldout.jsonl"
    path.write_text(json.dumps({"prompt": "x", "completion": "y"}) + "\n"
                    + json.dumps({"prompt": "long", "completion": "z" * 40}) + "\n"
                    + json.dumps({"prompt": "p", "completion": ""}) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        completion_dataset([str(path)], lambda s: [ord(c) for c in s], eos_id=0, max_len=16)
    assert [n for n, _ in err.value.problems] == [2, 3]


def test_ddp_ranks_see_what_accumulation_micro_batches_see() -> None:
    single = BatchPlan(37, batch_size=3, grad_accum=4, world_size=1, seed=5)
    ddp = BatchPlan(37, batch_size=3, grad_accum=2, world_size=2, seed=5)
    for step in range(6):
        assert single.step_indices(step) == ddp.step_indices(step)
        assert [ddp.micro_batch(step, m, r) for m in range(2) for r in range(2)] == single.step_indices(step)


def test_every_epoch_is_a_permutation_and_epochs_differ() -> None:
    plan = BatchPlan(10, batch_size=5, grad_accum=1, world_size=1, seed=0)
    first = plan.micro_batch(0, 0, 0) + plan.micro_batch(1, 0, 0)
    second = plan.micro_batch(2, 0, 0) + plan.micro_batch(3, 0, 0)
    assert sorted(first) == sorted(second) == list(range(10)) and first != second
    assert BatchPlan(10, 5, 1, 1, seed=0).micro_batch(3, 0, 0) == plan.micro_batch(3, 0, 0)  # a pure function
    assert plan.steps_for_epochs(1.5) == 3


def test_batches_pad_right_and_never_target_padding() -> None:
    ds = TokenDataset([[5, 6, 7], [8]], labels=[[-100, 6, 7], [8]], pad_id=0)
    b = ds.batch([0, 1])
    assert b.input_ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b.labels.tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert b.num_tokens == 4 and b.num_label_tokens == 2


def test_eval_shards_cover_each_example_once_with_equal_call_counts() -> None:
    ds = TokenDataset([[i, i + 1] for i in range(7)], pad_id=0)
    shards = [list(eval_batches(ds, 2, rank, 3)) for rank in range(3)]
    assert len({len(s) for s in shards}) == 1  # same number of forward calls on every rank
    seen = Counter(row[0] for s in shards for b in s for row, lab in zip(b.input_ids.tolist(), b.labels.tolist())
                   if lab[1] != -100)
    assert seen == Counter(range(7))
    assert sum(b.num_label_tokens for s in shards for b in s) == 7


def test_reverse_task_validation_strings_are_apart_from_training_and_test(tmp_path) -> None:
    from model.train.__main__ import main
    from model.train.evaluate import read_items

    assert main(["synth", "--out", str(tmp_path), "--num-train", "300", "--num-eval", "20",
                 "--num-validation", "30", "--max-len", "5"]) == 0
    train = {json.loads(line)["text"].split(" =")[0] for line in (tmp_path / "train.jsonl").read_text().splitlines()}
    test = {item["prompt"][:-2] for item in read_items(str(tmp_path / "heldout.jsonl"))}
    validation = {item["prompt"][:-2] for item in read_items(str(tmp_path / "validation.jsonl"))}
    assert (len(train), len(test), len(validation)) == (300, 20, 30)
    assert not (train & test) and not (train & validation) and not (test & validation)
