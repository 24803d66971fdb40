"""The packed loader: document-aware inputs, epoch order, rank shares, exact resume, skips."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.llama import IGNORE_INDEX
from tasks.tokenizer.shards import write_packed
from tasks.train.loader import Batch, PackedLoader, document_inputs
from tasks.train.shards import PackedShards

SEQ_LEN = 16
PAD, BOUNDARY, VOCAB = 0, 1, 50


def _documents(count: int, seed: int = 0) -> list[tuple[dict, list[int]]]:
    rng = np.random.default_rng(seed)
    return [
        ({"id": f"doc-{i}", "source": "synthetic"}, rng.integers(2, VOCAB, rng.integers(1, 30)).tolist())
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> PackedShards:
    directory = tmp_path_factory.mktemp("shards")
    write_packed(directory, _documents(80), SEQ_LEN, PAD, BOUNDARY, VOCAB)
    return PackedShards(directory)


def _take(loader: PackedLoader, n: int) -> list[Batch]:
    return list(itertools.islice(loader, n))


def _key(batch: Batch) -> tuple:
    return batch.index, batch.epoch, tuple(batch.rows), batch.input_ids.numpy().tobytes()


def test_inputs_keep_documents_apart(shards: PackedShards) -> None:
    loader = PackedLoader(shards, batch_size=4, seed=0)
    for batch in _take(loader, loader.batches_per_epoch):
        tokens, docs = batch.input_ids.numpy(), batch.doc_index
        np.testing.assert_array_equal(tokens, shards.tokens[batch.rows])
        np.testing.assert_array_equal(docs, shards.doc_index[batch.rows])
        for b, t in itertools.product(range(tokens.shape[0]), range(SEQ_LEN)):
            doc = docs[b, t]
            same_next = t + 1 < SEQ_LEN and doc >= 0 and docs[b, t + 1] == doc
            assert batch.labels[b, t] == (tokens[b, t + 1] if same_next else IGNORE_INDEX)
            first = next(s for s in range(t + 1) if (docs[b, s : t + 1] == doc).all())
            assert batch.position_ids[b, t] == t - first
            expected_row = [(s <= t and docs[b, s] == doc) for s in range(SEQ_LEN)]
            assert batch.attention_mask[b, 0, t].tolist() == expected_row


def test_a_documents_first_token_is_never_a_target_across_documents() -> None:
    tokens = np.array([[5, 6, BOUNDARY, 7, 8, BOUNDARY, PAD, PAD]])
    docs = np.array([[0, 0, 0, 1, 1, 1, -1, -1]])
    derived = document_inputs(tokens, docs)
    assert derived["labels"].tolist() == [[6, BOUNDARY, -100, 8, BOUNDARY, -100, -100, -100]]
    assert derived["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 0, 1]]
    assert derived["attention_mask"].shape == (1, 1, 8, 8)
    with pytest.raises(ValueError, match="must both be"):
        document_inputs(tokens, docs[:, :4])


def test_each_epoch_visits_every_row_once_in_a_new_seeded_order(shards: PackedShards) -> None:
    loader = PackedLoader(shards, batch_size=3, seed=5, drop_last=False)
    per_epoch = loader.batches_per_epoch
    assert per_epoch == -(-len(shards) // 3)
    epochs = [np.concatenate([b.rows for b in _take(loader, per_epoch)]) for _ in range(2)]
    for rows in epochs:
        assert sorted(rows.tolist()) == list(range(len(shards)))
    assert epochs[0].tolist() != epochs[1].tolist()
    again = PackedLoader(shards, batch_size=3, seed=5, drop_last=False)
    assert np.concatenate([b.rows for b in _take(again, per_epoch)]).tolist() == epochs[0].tolist()
    other_seed = PackedLoader(shards, batch_size=3, seed=6, drop_last=False)
    assert np.concatenate([b.rows for b in _take(other_seed, per_epoch)]).tolist() != epochs[0].tolist()
    in_order = PackedLoader(shards, batch_size=3, seed=5, shuffle=False, drop_last=False)
    assert np.concatenate([b.rows for b in _take(in_order, per_epoch)]).tolist() == list(range(len(shards)))


def test_drop_last_drops_the_partial_batch(shards: PackedShards) -> None:
    loader = PackedLoader(shards, batch_size=5, seed=0)
    assert loader.batches_per_epoch == len(shards) // 5
    batches = _take(loader, loader.batches_per_epoch + 1)
    assert all(b.input_ids.shape == (5, SEQ_LEN) for b in batches)
    assert [b.epoch for b in batches[-2:]] == [0, 1]
    assert batches[-1].index == loader.batches_per_epoch


def test_two_ranks_share_the_global_batch_of_one(shards: PackedShards) -> None:
    single = _take(PackedLoader(shards, batch_size=4, seed=1), 12)
    ranks = [_take(PackedLoader(shards, batch_size=2, seed=1, rank=r, world_size=2), 12) for r in range(2)]
    for whole, first, second in zip(single, *ranks, strict=True):
        assert whole.index == first.index == second.index
        assert sorted([*first.rows, *second.rows]) == sorted(whole.rows)
        joined = torch.cat([first.input_ids, second.input_ids])
        order = np.argsort(np.concatenate([first.rows, second.rows]))
        torch.testing.assert_close(joined[order], whole.input_ids[np.argsort(whole.rows)])


@pytest.mark.parametrize("stop_after", [0, 3, 7, 8, 9, 19])
def test_resume_yields_exactly_the_uninterrupted_batches(shards: PackedShards, stop_after: int) -> None:
    def loader() -> PackedLoader:
        made = PackedLoader(shards, batch_size=8, seed=3)
        made.skip(5, 7)
        made.skip(10, 11)
        return made

    reference = loader()
    assert reference.batches_per_epoch == 9  # so the cases cross epoch boundaries
    expected = [_key(b) for b in _take(reference, 24)]
    assert not {5, 6, 10} & {k[0] for k in expected}

    first = loader()
    seen = [_key(b) for b in _take(first, stop_after)]
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
    resumed = PackedLoader(shards, batch_size=8, seed=3)
    resumed.load_state_dict(state)
    seen += [_key(b) for b in _take(resumed, 24 - stop_after)]
    assert seen == expected


def test_skip_during_a_run_and_rollback(shards: PackedShards) -> None:
    loader = PackedLoader(shards, batch_size=4, seed=2)
    _take(loader, 3)
    checkpoint = loader.state_dict()
    _take(loader, 4)  # batches 3..6; say 6 spiked
    loader.load_state_dict(checkpoint)
    loader.skip(3, 9)
    loader.skip(8, 12)  # overlapping ranges merge
    assert loader.skips == [(3, 12)]
    assert [b.index for b in _take(loader, 3)] == [12, 13, 14]
    assert loader.state_dict()["skips"] == [[3, 12]]
    with pytest.raises(ValueError, match="skip range"):
        loader.skip(4, 4)


def test_a_state_from_another_configuration_is_refused(shards: PackedShards) -> None:
    state = PackedLoader(shards, batch_size=4, seed=3).state_dict()
    for other in (PackedLoader(shards, batch_size=2, seed=3), PackedLoader(shards, batch_size=4, seed=4)):
        with pytest.raises(ValueError, match="resume with"):
            other.load_state_dict(state)
    # The same global batch over two ranks is the same order, so it may resume.
    PackedLoader(shards, batch_size=2, seed=3, rank=1, world_size=2).load_state_dict(state)


def test_bad_arguments_are_errors(tmp_path: Path, shards: PackedShards) -> None:
    with pytest.raises(ValueError, match="fewer than one global batch"):
        PackedLoader(shards, batch_size=len(shards) + 1, seed=0)
    with pytest.raises(ValueError, match="rank 2"):
        PackedLoader(shards, batch_size=1, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="seed"):
        PackedLoader(shards, batch_size=1, seed=-1)
    small = tmp_path / "small"
    write_packed(small, _documents(2), SEQ_LEN, PAD, BOUNDARY, VOCAB)
    rows = len(PackedShards(small))
    with pytest.raises(ValueError, match="leaving a rank empty"):
        PackedLoader(PackedShards(small), batch_size=rows, seed=0, world_size=rows + 1, drop_last=False)


def test_model_inputs_match_the_kernel(shards: PackedShards) -> None:
    batch = next(iter(PackedLoader(shards, batch_size=2, seed=0)))
    sdpa = batch.model_inputs("sdpa")
    assert sdpa["attention_mask"].dtype == torch.bool
    eager = batch.model_inputs("eager", dtype=torch.bfloat16)
    assert eager["attention_mask"].dtype == torch.bfloat16
    assert torch.equal(eager["attention_mask"] == 0, batch.attention_mask)
    assert set(sdpa) == {"input_ids", "position_ids", "attention_mask"}
