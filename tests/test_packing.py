"""The trie of a window's prompts, its batches, and the calibrated mask of a trie level."""

import numpy as np
import torch

from timekd_embed.lm import level_masks
from timekd_embed.packing import Prompt, batches, build_trie, leaf_buckets, type_codes

MIN = torch.finfo(torch.float32).min


def prompt(ids, codes=None, horizon=0) -> Prompt:
    ids = np.array(ids, dtype=np.int64)
    return Prompt(ids, np.zeros(len(ids), np.int8) if codes is None else np.array(codes, dtype=np.int8), horizon)


# One window, two variables, two horizons: [GT_24, HD_24, GT_36, HD_36] per variable.
# Every prompt starts with the head 10 11; variable A's values are 20 21, B's 30; then the tails.
A = [prompt([10, 11, 20, 21, 5, 24, 7, 8]), prompt([10, 11, 20, 21, 6, 24]),
     prompt([10, 11, 20, 21, 5, 36, 7, 8, 9], horizon=1), prompt([10, 11, 20, 21, 6, 36], horizon=1)]
B = [prompt([10, 11, 30, 5, 24, 7]), prompt([10, 11, 30, 6, 24]),
     prompt([10, 11, 30, 5, 36, 7, 9], horizon=1), prompt([10, 11, 30, 6, 36], horizon=1)]


def test_a_window_is_one_head_then_a_stem_per_variable_then_a_leaf_per_prompt():
    trie = build_trie([A, B])
    assert trie.head.ids.tolist() == [10, 11] and trie.head.start == 0
    a, b = trie.branches
    assert a.stem.ids.tolist() == [20, 21] and a.stem.start == 2
    assert b.stem.ids.tolist() == [30] and b.stem.start == 2
    assert [leaf.ids.tolist() for leaf in a.leaves] == [[5, 24, 7, 8], [6, 24], [5, 36, 7, 8, 9], [6, 36]]
    assert [leaf.start for leaf in a.leaves] == [4] * 4 and [leaf.start for leaf in b.leaves] == [3] * 4
    # Every token is in exactly one node: head + stem + leaf rebuilds each prompt.
    for branch, prompts in zip(trie.branches, (A, B)):
        for leaf, p in zip(branch.leaves, prompts):
            assert np.concatenate([trie.head.ids, branch.stem.ids, leaf.ids]).tolist() == p.ids.tolist()


def test_borrowed_codes_that_disagree_end_the_shared_part_where_they_disagree():
    # Reference fidelity: same tokens, but the second prompt's mask reads another type from position 3 on.
    codes = [0, 0, 1, 1, 0, 0, 0, 0]
    other = [0, 0, 1, 0, 0, 0]
    trie = build_trie([[prompt(A[0].ids, codes), prompt(A[1].ids, other)]])
    assert trie.head.ids.tolist() == [10, 11, 20]           # ids and codes agree up to position 2
    assert trie.branches[0].stem.ids.tolist() == []
    assert trie.branches[0].leaves[1].codes.tolist() == [0, 0, 0]


def test_a_prompt_that_is_a_prefix_of_another_keeps_its_last_token_as_its_leaf():
    trie = build_trie([[prompt([1, 2, 3]), prompt([1, 2, 3, 4])]])
    assert trie.head.ids.tolist() == [1, 2]
    assert [leaf.ids.tolist() for leaf in trie.branches[0].leaves] == [[3], [3, 4]]
    alone = build_trie([[prompt([1, 2, 3])]], share_head=False)
    assert alone.head.ids.tolist() == [] and alone.branches[0].stem.ids.tolist() == [1, 2]


def test_type_codes_beyond_the_borrowed_list_are_untyped():
    assert type_codes(np.array([1, 0], np.int8), 4).tolist() == [1, 0, -1, -1]


def test_variables_with_equal_inputs_share_their_stem_and_equal_leaves():
    # C has A's inputs (head 10 11, values 20 21) but another GT tail at horizon 36.
    C = A[:2] + [prompt([10, 11, 20, 21, 5, 36, 7, 3, 9], horizon=1), A[3]]
    trie = build_trie([A, B, C, A])
    assert len(trie.branches) == 2 and len(trie.branches[0].leaves) == 5        # A's 4 leaves and C's own GT_36
    assert trie.leaf_of[:, :, 0].tolist() == [[0] * 4, [1] * 4, [0] * 4, [0] * 4]
    assert trie.leaf_of[2, :, 1].tolist() == [0, 1, 4, 3] and trie.leaf_of[3, :, 1].tolist() == [0, 1, 2, 3]
    apart = build_trie([A, B, C, A], merge_equal=False)
    assert len(apart.branches) == 4 and apart.leaf_of[3, 2].tolist() == [3, 2]


def test_leaf_buckets_keep_padding_below_a_quarter():
    lengths = [10, 600, 11, 9, 150, 580, 140, 12]
    buckets = leaf_buckets(lengths)
    assert buckets == [[1, 5], [4, 6], [7, 2, 0, 3]]
    assert leaf_buckets(lengths, token_budget=1000) == [[1], [5], [4, 6], [7, 2, 0, 3]]
    assert leaf_buckets(lengths, token_budget=24) == [[1], [5], [4], [6], [7, 2], [0, 3]]   # 2 x 12, 2 x 10


def test_batches_respect_the_budget_and_name_every_kept_state():
    tries = [build_trie([A, B]), build_trie([B, A])]
    items = [(t, b) for t in range(2) for b in range(2)]
    one = batches(tries, items, token_budget=10_000)
    assert len(one) == 1 and len(one[0].kept) == 16
    assert sorted(map(tuple, one[0].kept.tolist())) == [(k, j) for k in range(4) for j in range(4)]
    # The real positions: two heads of 2, stems 2 + 1 + 1 + 2, leaves (4+2+5+2) x 2 + (3+2+4+2) x 2.
    assert one[0].real_positions() == 4 + 6 + 26 + 22
    # Heads and stems together, and each leaf tensor, within the budget; a leaf tensor holds one horizon.
    small = batches(tries, items, token_budget=8)
    assert len(small) > 1 and all(b.levels[0].ids.numel() + b.levels[1].ids.numel() <= 8 for b in small)
    assert all(level.ids.numel() <= 8 for b in small for level in b.levels[2:])
    horizon_of = {(k, j): j // 2 for k in range(4) for j in range(4)}         # leaves 0, 1: horizon 0; 2, 3: 1
    for b in small:
        start = 0
        for level in b.levels[2:]:
            rows = b.kept[start:start + len(level.ids)]
            assert len({horizon_of[tuple(row)] for row in rows.tolist()}) == 1
            start += len(level.ids)
    # Split batches hold the same nodes, but a head once in every batch its window appears in (2 tokens each).
    heads = sum(len(b.levels[0].ids) for b in small)
    assert sum(b.real_positions() for b in small) == one[0].real_positions() + 2 * (heads - 2)


def test_which_branches_share_a_batch_does_not_depend_on_the_other_horizons():
    tries = [build_trie([A, B]), build_trie([B, A])]
    only_24 = [build_trie([A[:2], B[:2]]), build_trie([B[:2], A[:2]])]
    items = [(t, b) for t in range(2) for b in range(2)]
    for budget in (8, 10, 10_000):
        both, alone = batches(tries, items, budget), batches(only_24, items, budget)
        assert [b.owners[1].tolist() for b in both] == [b.owners[1].tolist() for b in alone]
        for b, a in zip(both, alone):             # heads, stems and horizon 24's leaf tensors: the same tensors
            shared = 2 + len(a.levels) - 2
            for mine, theirs in zip(b.levels[:shared], a.levels):
                assert torch.equal(mine.ids, theirs.ids) and torch.equal(mine.positions, theirs.positions)


def test_a_leaf_sees_its_ancestors_and_itself_with_calibration_and_never_padding():
    # Head [L, T, T] (0 language, 1 time-series), an empty stem (one padding column), leaves [T, L, L] and [L].
    trie = build_trie([[prompt([1, 2, 3, 4, 5, 6], [0, 1, 1, 1, 0, 0]), prompt([1, 2, 3, 9], [0, 1, 1, 0])]])
    batch = batches([trie], [(0, 0)], 1000)[0]
    head, stem, *leaves = level_masks(batch, torch.float32)
    assert head[0, 0].tolist() == [[0, MIN, MIN], [-100, 0, MIN], [-100, 0, 0]]
    assert stem[0, 0].tolist() == [[0, 0, 0, MIN]]
    long_leaf = next(m for m in leaves if m.shape[2] == 3)[0, 0]   # keys: 3 head, 1 stem (padding), 3 own
    assert long_leaf.tolist() == [
        [-100, 0, 0, MIN, 0, MIN, MIN],
        [0, -100, -100, MIN, -100, 0, MIN],     # a language query: -100 to every time-series key
        [0, -100, -100, MIN, -100, 0, 0],
    ]
