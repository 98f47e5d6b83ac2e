"""The producer's chunk plan (labelq.producer.ChunkPlan): where a listing is cut into chunks.

Pure functions of the listing: the same listing is cut the same way whether it is listed in one go or resumed
from any cut (a relisted group is the same chunk); the largest chunk is the chunk size; a job's first chunks
ramp up and its tail is cut into equal chunks, one per slot."""

from __future__ import annotations

from itertools import accumulate, pairwise

import pytest

from labelq.objects import ObjectRef
from labelq.producer import MIN_CHUNK, ChunkPlan, distinct_groups, planned_groups


def listing(n: int, start: int = 0) -> list[tuple[ObjectRef, str]]:
    return [(ObjectRef(f"s3://b/k{i:06d}.jpg"), f"k{i:06d}.jpg") for i in range(start, n)]


def cut(plan: ChunkPlan, n: int, start: int = 0) -> list[int]:
    """End positions of the groups ``planned_groups`` makes of a listing of n objects resumed at ``start``."""
    sizes = [len(g) for g in planned_groups(iter(listing(n, start)), plan, start)]
    return list(accumulate(sizes, initial=start))[1:]


def test_600_objects_on_two_slots_ramp_then_end_in_two_equal_chunks() -> None:
    plan = ChunkPlan(256, 2)
    assert plan.cuts(600) == [64, 128, 364, 600]  # 64, 64, then the last 472 as 236 + 236
    assert cut(plan, 600) == plan.cuts(600)


def test_a_long_listing_uses_full_chunks_after_the_ramp_and_a_balanced_tail() -> None:
    plan = ChunkPlan(256, 2)
    sizes = [b - a for a, b in pairwise([0, *plan.cuts(10_000)])]
    assert sizes[:4] == [64, 64, 128, 128] and max(sizes) == 256 and sum(sizes) == 10_000
    assert sizes[-2] == sizes[-1] and sizes[-1] > 64  # the last two (one per slot) equal, none left alone
    assert set(sizes[4:-2]) == {256}


@pytest.mark.parametrize("slots", [1, 2, 3, 8])
@pytest.mark.parametrize("size", [1, 5, 16, 100, 256])
def test_every_chunk_is_within_bounds_and_the_cuts_cover_the_listing(size: int, slots: int) -> None:
    plan = ChunkPlan(size, slots)
    for n in [*range(0, 70), 255, 256, 257, 511, 512, 513, 600, 1000, 4099]:
        cuts = plan.cuts(n)
        sizes = [b - a for a, b in pairwise([0, *cuts])]
        assert sum(sizes) == n and all(0 < s <= size for s in sizes), (n, sizes)
        tail = plan.tail(n - plan.tail_start(n))
        assert sizes[len(sizes) - len(tail):] == tail
        assert all(s >= min(MIN_CHUNK, size) for s in sizes[: len(sizes) - len(tail)]), (n, sizes)  # the ramp
        assert len(tail) <= max(slots, 1), (n, sizes)
        tail = sizes[-slots:] if len(sizes) >= slots else sizes
        assert max(tail, default=0) - min(tail, default=0) <= 1 or len(sizes) < slots  # the tail is balanced


@pytest.mark.parametrize("n", [1, 7, 100, 129, 600, 1000, 3333])
def test_a_resume_from_any_cut_cuts_the_rest_as_the_first_producer_did(n: int) -> None:
    plan = ChunkPlan(256, 2)
    whole = cut(plan, n)
    assert whole == plan.cuts(n)
    for start in [0, *whole[:-1]]:
        assert cut(plan, n, start) == [c for c in whole if c > start], start


def test_fixed_plan_is_the_old_chunking_and_the_chunk_size_is_the_largest_chunk() -> None:
    assert ChunkPlan(256).cuts(600) == [256, 512, 600]
    assert cut(ChunkPlan(256, 0), 600) == [256, 512, 600]
    assert ChunkPlan(16, 2).cuts(48) == [16, 32, 48]  # small chunks: no ramp below the floor
    assert ChunkPlan(16, 2).cuts(20) == [10, 20]
    assert ChunkPlan.decode(ChunkPlan(256, 2).encode()) == ChunkPlan(256, 2)
    assert ChunkPlan.decode("64") == ChunkPlan(64, 0)


def test_the_plan_sees_at_most_one_window_ahead() -> None:
    plan = ChunkPlan(10, 2)
    taken = 0

    def counted() -> object:
        nonlocal taken
        for pair in listing(1000):
            taken += 1
            yield pair

    groups = planned_groups(counted(), plan)  # type: ignore[arg-type]
    first = next(groups)
    assert len(first) == 10 and taken == plan.window + 1  # a chunk out after 21 objects listed, not 1000


def test_distinct_groups_names_each_object_once() -> None:
    pairs = listing(6)
    repeated = [pairs[0], pairs[1], pairs[1], pairs[2], pairs[0], pairs[3], pairs[4], pairs[5]]
    seen: set[str] = set()
    got = [[r.uri for r in refs] for _, refs in distinct_groups(iter(repeated), 3, seen)]
    names = [r.uri for r, _ in pairs]
    assert got == [names[0:2], names[2:4], names[4:6]]  # raw groups of 3, repeats dropped, across groups too
    assert seen == set(names)
    no_seen = [[r.uri for r in refs] for _, refs in distinct_groups(iter(repeated), 3, None)]
    assert no_seen == [names[0:2], [names[2], names[0], names[3]], names[4:6]]  # within a group only
