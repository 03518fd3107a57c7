"""Prompts -> one trie of shared prefixes per window -> padded model inputs.

A window's prompts (GT and HD of every variable, for every configured horizon P) agree on
long prefixes. Every prompt of the window begins with the same head ("From <t1> to <t2>,
the values were <", about 26 tokens). After it, the prompts of one variable agree for all
horizons up to the end of its input values ("... <v1, ..., v96> every hour.", about 250
tokens); only the tails differ (GT: "The values for the next P hours are <...>", HD:
"Forecast the values for the next P hours"). So one window is a trie of three levels:

    head                     once per window, shared by every variable
    stem (one per variable)  what all 2 x |pred_lens| prompts of the variable share after the head
    leaf (one per prompt)    the rest of the prompt, at least its last token (whose state is kept)

Every node's keys and values are computed once, and each node attends to its ancestors'
keys and values at their true positions. This is exact, not an approximation: every query
sees the same keys, at the same positions, with the same calibration, as in its own prompt
(TimeKD, Liu et al., ICDE 2025; the published store_emb.py / clm.py run each prompt alone).

Calibration: each token carries the type code its prompt's mask reads at its position
(1 time-series, 0 language, -1 none). In `reference` fidelity those codes are borrowed from
another variable's prompts (per horizon), so a node is shared only as far as the codes agree
as well as the tokens: checked here, never assumed.

Variables whose input values agree over the whole window (rain gauges at 0, say) have equal
stems: they share one branch, and equal leaves under it are one leaf.

Batching: the nodes of several branches go through the model together as one `TrieBatch`,
one padded tensor per level. Branches are grouped by their heads and stems alone, and each
horizon's leaves get tensors of their own, so a horizon's tensors are the same whichever
other horizons run with it: one job per horizon and one job for every horizon run the same
operations on the same tensors, and give the same bits. Leaves are very unequal (HD tails
about 10 tokens, GT tails up to about 600), so each horizon's are cut into length buckets.
The token budget bounds the padded positions of each leaf tensor, and a share of it
(PREFIX_SHARE) those of a batch's heads and stems together.

`model_inputs` is the whole way from a split's prompts to the batches of a set of windows,
and says where each prompt's kept state lands among the batches' outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from .prompts import SplitPrompts

BUCKET_RATIO = 0.75  # a leaf joins a bucket while it is at least this fraction of the bucket's longest
STEM_STEP = 16       # stems within this many tokens of each other count as equally long when batching
# The share of the token budget a batch's heads and stems get. On weather the tails of the five
# default horizons hold 4.6-5.3 times their positions, so a batch of all five holds about the
# budget. A larger share keeps more tails alive at once: peak RSS 2.41 GB at share 1, 1.63 GB at
# 1/6, about as fast (docs/benchmarks.md, whole job: GPT-2-small shape, fp32, budget 8,192).
PREFIX_SHARE = 1 / 6


@dataclass(frozen=True)
class Prompt:
    """One prompt as the model reads it."""
    ids: np.ndarray    # (L,) int64 token ids
    codes: np.ndarray  # (L,) int8 type code per token (what its mask reads)
    horizon: int = 0   # its horizon's number: a leaf shares tensors only with its horizon's leaves


@dataclass(frozen=True)
class Node:
    """A run of tokens of the trie, at positions start..start+len-1 of its prompts."""
    ids: np.ndarray    # (n,) int64
    codes: np.ndarray  # (n,) int8
    start: int
    horizon: int = 0   # a leaf's: its prompt's Prompt.horizon

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Branch:
    """A stem and its distinct leaves: one variable's, or those of variables with equal stems."""
    stem: Node
    leaves: tuple[Node, ...]


@dataclass(frozen=True)
class Trie:
    """One window: the head every branch follows, then one branch per distinct stem."""
    head: Node
    branches: tuple[Branch, ...]
    leaf_of: np.ndarray  # (variables, prompts, 2) int64: the (branch, leaf) that ends each prompt


def type_codes(source: np.ndarray, length: int) -> np.ndarray:
    """The codes a prompt of `length` tokens reads from a (possibly borrowed) type list.

    Args:
        source: (S,) int8 type flags (1 time series, 0 language), maybe another prompt's
            (reference fidelity: the last variable's, as the published store_emb.py reads them).
        length: the prompt's token count L.
    Returns:
        (L,) int8: source's first L codes, -1 past its end.
    """
    codes = np.full(length, -1, dtype=np.int8)
    copied = min(length, len(source))
    codes[:copied] = source[:copied]
    return codes


def _shared_length(prompts: list[Prompt], start: int, cap: int) -> int:
    """How many tokens from `start` on all `prompts` agree on, ids and codes, at most `cap`."""
    if cap <= 0 or len(prompts) == 1:
        return max(cap, 0)
    ids = np.stack([prompt.ids[start:start + cap] for prompt in prompts])        # (prompts, cap)
    codes = np.stack([prompt.codes[start:start + cap] for prompt in prompts])
    agree = ((ids == ids[0]) & (codes == codes[0])).all(axis=0)
    return cap if agree.all() else int(np.argmin(agree))


def build_trie(groups: list[list[Prompt]], share_head: bool = True, merge_equal: bool = True) -> Trie:
    """The trie of one window: `groups` holds each variable's prompts.

    Args:
        groups: per variable, its prompts (e.g. GT and HD for each horizon), each >= 1 token;
            every variable has as many prompts.
        share_head: move the tokens all prompts share into one head; without it the head is
            empty and each variable's stem starts at position 0.
        merge_equal: variables whose stems agree (ids and codes) share one branch, and equal
            leaves of a branch (ids, codes and horizon) are one leaf; without it every
            variable has its own branch and every prompt its own leaf.
    Returns:
        The trie; every leaf keeps at least its prompt's last token.
    Raises:
        ValueError: the variables have different numbers of prompts (a caller's bug).
    """
    if len({len(group) for group in groups}) != 1:
        raise ValueError(f"every variable needs as many prompts, got {[len(group) for group in groups]}")
    everything = [prompt for group in groups for prompt in group]
    shortest = min(len(prompt.ids) for prompt in everything)
    head_len = _shared_length(everything, 0, shortest - 1) if share_head else 0
    head = Node(everything[0].ids[:head_len], everything[0].codes[:head_len], 0)
    branch_of: dict[tuple, int] = {}                # stem (ids, codes), or the variable -> its branch
    stems: list[Node] = []
    leaves: list[dict[tuple, tuple[int, Node]]] = []  # per branch: leaf key -> (its index, the leaf)
    leaf_of = np.empty((len(groups), len(groups[0]), 2), np.int64)
    for variable, group in enumerate(groups):
        stem_len = _shared_length(group, head_len, min(len(prompt.ids) for prompt in group) - 1 - head_len)
        leaf_start = head_len + stem_len
        stem = Node(group[0].ids[head_len:leaf_start], group[0].codes[head_len:leaf_start], head_len)
        branch = branch_of.setdefault((stem.ids.tobytes(), stem.codes.tobytes()) if merge_equal else variable,
                                      len(stems))
        if branch == len(stems):
            stems.append(stem)
            leaves.append({})
        for number, prompt in enumerate(group):
            leaf = Node(prompt.ids[leaf_start:], prompt.codes[leaf_start:], leaf_start, prompt.horizon)
            key = (leaf.ids.tobytes(), leaf.codes.tobytes(), leaf.horizon) if merge_equal else number
            leaf_of[variable, number] = branch, leaves[branch].setdefault(key, (len(leaves[branch]), leaf))[0]
    branches = tuple(Branch(stem, tuple(leaf for _, leaf in own.values())) for stem, own in zip(stems, leaves))
    return Trie(head, branches, leaf_of)


@dataclass(frozen=True)
class Level:
    """One padded tensor of trie nodes; each row continues a row of its parent level."""
    ids: torch.Tensor          # (R, T) int64, 0 in padding
    positions: torch.Tensor    # (R, T) int64 position ids, 0 in padding
    codes: torch.Tensor        # (R, T) int8 type codes, -1 in padding
    valid: torch.Tensor        # (R, T) bool, False in padding
    parent: int                # index of the parent level in TrieBatch.levels; -1: none
    parent_rows: torch.Tensor  # (R,) int64 the parent row of each row (empty without a parent)
    last: torch.Tensor | None  # (R,) int64 leaves: index of the kept (last) token; None: inner nodes

    def to(self, device, pin: bool = False) -> Level:
        """The same level on `device` (or, with pin, in page-locked host memory).

        Args:
            device: a torch device (ignored with pin); pin: copy to page-locked host memory instead.
        Returns:
            The moved Level (non-blocking copies).
        """
        names = ("ids", "positions", "codes", "valid", "parent_rows") + (("last",) if self.last is not None else ())
        moved = {name: getattr(self, name).pin_memory() if pin else getattr(self, name).to(device, non_blocking=True)
                 for name in names}
        return replace(self, **moved)


@dataclass(frozen=True)
class TrieBatch:
    """The model inputs of one forward pass: levels in order, parents before children.

    owners[k][r]: the branch item (index into the list given to `batches`) of row r of level k
    (for a head row, the first item that follows it). kept (n, 2): per kept state, in output
    order (leaf levels in order, their rows in order), its (item, leaf index in the branch).
    """
    levels: list[Level]
    owners: list[np.ndarray]
    kept: np.ndarray

    def to(self, device) -> TrieBatch:
        """The same batch with every tensor on `device` (a no-op where it is there already)."""
        return replace(self, levels=[level.to(device) for level in self.levels])

    def pin_memory(self) -> TrieBatch:
        """Page-locked host copies, so that the copies to a GPU run asynchronously."""
        return replace(self, levels=[level.to(None, pin=True) for level in self.levels])

    def padded_positions(self) -> int:
        """Positions the forward computes, padding included (rows x columns, summed over levels)."""
        return sum(int(level.ids.numel()) for level in self.levels)

    def real_positions(self) -> int:
        """Positions of real tokens, padding excluded."""
        return sum(int(level.valid.sum()) for level in self.levels)


def _level(nodes: list[Node], parent: int, parent_rows: list[int], leaves: bool) -> Level:
    R, T = len(nodes), max(1, max(len(node) for node in nodes))  # at least one column: shapes never empty
    ids, positions = np.zeros((R, T), np.int64), np.zeros((R, T), np.int64)
    codes, valid = np.full((R, T), -1, np.int8), np.zeros((R, T), bool)
    for row, node in enumerate(nodes):
        length = len(node)
        ids[row, :length], codes[row, :length], valid[row, :length] = node.ids, node.codes, True
        positions[row, :length] = np.arange(node.start, node.start + length)
    last = torch.tensor([len(node) - 1 for node in nodes], dtype=torch.int64) if leaves else None
    return Level(torch.from_numpy(ids), torch.from_numpy(positions), torch.from_numpy(codes), torch.from_numpy(valid),
                 parent, torch.tensor(parent_rows, dtype=torch.int64), last)


def leaf_buckets(lengths: list[int], ratio: float = BUCKET_RATIO, token_budget: int | None = None) -> list[list[int]]:
    """Leaf indices grouped longest first; a bucket takes leaves down to `ratio` of its longest,
    so that padding stays below 1 - ratio of each bucket.

    Args:
        lengths: the leaves' token counts.
        ratio: the shortest leaf a bucket takes, as a fraction of its longest.
        token_budget: padded positions per bucket (rows x its longest leaf); a leaf longer than
            the budget gets a bucket of its own. None: no bound.
    Returns:
        Buckets of leaf indices, each longest first.
    """
    order = sorted(range(len(lengths)), key=lambda leaf: -lengths[leaf])
    buckets: list[list[int]] = []
    for leaf in order:
        if buckets and lengths[leaf] >= ratio * lengths[buckets[-1][0]] and (
                token_budget is None or (len(buckets[-1]) + 1) * max(1, lengths[buckets[-1][0]]) <= token_budget):
            buckets[-1].append(leaf)
        else:
            buckets.append([leaf])
    return buckets


def _inner_cost(tries: list[Trie], items: list[tuple[int, int]]) -> int:
    """Padded positions of the heads and stems of one batch of branch items (rows x padded length)."""
    heads = {trie for trie, _ in items}
    cost = len(heads) * max(1, max(len(tries[trie].head) for trie in heads))
    return cost + len(items) * max(1, max(len(tries[trie].branches[branch].stem) for trie, branch in items))


def batches(tries: list[Trie], items: list[tuple[int, int]], token_budget: int) -> list[TrieBatch]:
    """The branch items (trie index, branch index) as batches.

    Items are taken longest stem first (in steps of STEM_STEP tokens, and within a step window by
    window), so that stems of similar lengths share a batch and a window's items stay together (its
    head runs once per batch it appears in). A batch holds the heads its items follow (once each)
    and their stems, at most PREFIX_SHARE x `token_budget` padded positions together (an item
    larger than that on its own gets a batch of its own), then their leaves: per horizon, in
    length buckets of at most `token_budget` padded positions each. Which items share a batch,
    and so every tensor of a horizon, depends on the heads and stems alone, not on the other
    horizons' leaves.

    Args:
        tries: the windows' tries.
        items: the branch items to run, (trie index, branch index) each.
        token_budget: padded positions per batch (config key batch_tokens).
    Returns:
        The batches, on the CPU; their owners index `items`.
    """
    def stem_step(k: int) -> tuple[int, int, int]:
        """Sort key of item k: its stem length in STEM_STEP steps (longest first), its trie, k."""

        return -(len(tries[items[k][0]].branches[items[k][1]].stem) // STEM_STEP), items[k][0], k

    order = sorted(range(len(items)), key=stem_step)
    prefix_budget = max(1, int(token_budget * PREFIX_SHARE))
    groups: list[list[int]] = []
    for k in order:
        if groups and _inner_cost(tries, [items[j] for j in groups[-1] + [k]]) <= prefix_budget:
            groups[-1].append(k)
        else:
            groups.append([k])
    return [_batch(tries, items, group, token_budget) for group in groups]


def _batch(tries: list[Trie], items: list[tuple[int, int]], group: list[int], token_budget: int) -> TrieBatch:
    head_row: dict[int, int] = {}      # trie index -> its head's row
    for k in group:
        head_row.setdefault(items[k][0], len(head_row))
    head_owner: dict[int, int] = {}
    for k in group:
        head_owner.setdefault(items[k][0], k)
    heads = _level([tries[t].head for t in head_row], -1, [], leaves=False)
    stems = _level([tries[items[k][0]].branches[items[k][1]].stem for k in group], 0,
                   [head_row[items[k][0]] for k in group], leaves=False)
    leaves = [(row, j, leaf) for row, k in enumerate(group)
              for j, leaf in enumerate(tries[items[k][0]].branches[items[k][1]].leaves)]
    levels, owners, kept = [heads, stems], [np.array([head_owner[t] for t in head_row]), np.array(group)], []
    for horizon in sorted({leaf.horizon for _, _, leaf in leaves}):
        own = [entry for entry in leaves if entry[2].horizon == horizon]
        for bucket in leaf_buckets([len(leaf) for _, _, leaf in own], token_budget=token_budget):
            chosen = [own[k] for k in bucket]
            levels.append(_level([leaf for _, _, leaf in chosen], 1, [row for row, _, _ in chosen], leaves=True))
            owners.append(np.array([group[row] for row, _, _ in chosen]))
            kept += [(group[row], j) for row, j, _ in chosen]
    return TrieBatch(levels, owners, np.array(kept, dtype=np.int64).reshape(-1, 2))


# --------------------------------------------------------------------------- a split's windows as model inputs


def prompt_pairs(prompts: SplitPrompts, i: int, fidelity: str) -> list[tuple[np.ndarray, ...]]:
    """(GT ids, HD ids, GT types, HD types) per variable of window i at one horizon: the types
    are those the prompts' masks read.

    Args:
        prompts: the split's prompts at one horizon.
        i: the window's index.
        fidelity: "reference" (every prompt's mask reads the last variable's types, as the
            published store_emb.py does) or "corrected" (each prompt its own).
    Returns:
        N tuples of int64 ids (L_gt,), (L_hd,) and int8 type flags (1: time series) of the same lengths.
    """
    ids = prompts.window_ids(i)
    if fidelity == "reference":
        # The published defect (store_emb.py): every GT (HD) prompt's mask uses the token types
        # of the last variable's GT (HD) prompt.
        last_gt, last_hd = (prompts.types(prompt_ids[-1]).astype(np.int8) for prompt_ids in (ids.gt, ids.hd))
        gt_types, hd_types = [last_gt] * len(ids.gt), [last_hd] * len(ids.hd)
    else:
        gt_types = [prompts.types(prompt_ids).astype(np.int8) for prompt_ids in ids.gt]
        hd_types = [prompts.types(prompt_ids).astype(np.int8) for prompt_ids in ids.hd]
    return list(zip(ids.gt, ids.hd, gt_types, hd_types))


def window_prompts(prompts_by_pred_len: dict[int, SplitPrompts], i: int, fidelity: str) -> tuple[list, list[int]]:
    """Per variable, its prompts at every horizon where window i exists: GT then HD per horizon.

    Args:
        prompts_by_pred_len: the split's prompts per horizon P.
        i: the window's index.
        fidelity: "reference" or "corrected" (prompt_pairs).
    Returns:
        (groups, slots): groups[c] the list of Prompt of variable c; slots the positions 2p (GT)
        and 2p + 1 (HD), p the horizon's number in prompts_by_pred_len (also each Prompt's
        horizon), of each prompt in a group.
    Raises:
        ValueError: window i exists at none of the horizons (a caller's bug, not bad input).
    """
    groups: list[list[Prompt]] | None = None
    slots: list[int] = []
    for horizon_number, prompts in enumerate(prompts_by_pred_len.values()):
        if i >= prompts.n_windows:
            continue
        pairs = prompt_pairs(prompts, i, fidelity)
        groups = groups or [[] for _ in pairs]
        for group, (gt, hd, gt_types, hd_types) in zip(groups, pairs):
            group += [Prompt(gt, type_codes(gt_types, len(gt)), horizon_number),
                      Prompt(hd, type_codes(hd_types, len(hd)), horizon_number)]
        slots += [2 * horizon_number, 2 * horizon_number + 1]
    if groups is None:
        raise ValueError(f"window {i} exists at none of the horizons {list(prompts_by_pred_len)}")
    return groups, slots


def packed_window(prompts_by_pred_len: dict[int, SplitPrompts], i: int, fidelity: str) -> tuple[Trie, list[int]]:
    """Window i's prompts at all its horizons as one trie, and the prompts' slots (window_prompts)."""
    groups, slots = window_prompts(prompts_by_pred_len, i, fidelity)
    return build_trie(groups), slots


def prefix_tokens(prompts_by_pred_len: dict[int, SplitPrompts], window: int, fidelity: str) -> int:
    """The tokens of a window's head and stems (its trie's inner nodes), the part of its prompts a
    batch's token budget counts before the tails; the same at every horizon. At least 1."""
    trie, _ = packed_window(prompts_by_pred_len, window, fidelity)
    return max(1, len(trie.head) + sum(len(branch.stem) for branch in trie.branches))


@dataclass(frozen=True)
class ModelInputs:
    """The batches of a set of windows, and where each prompt's kept state lands.

    rows_of[w, c, s]: the row of the batches' concatenated kept states (in batch order) that
    holds window w's variable c at slot s (2p: GT, 2p + 1: HD of horizon number p), -1 where
    the window does not exist at that horizon. items[k]: the (window position, first variable)
    of branch item k, which the batches' owners and kept entries index.
    """
    batches: list[TrieBatch]
    rows_of: np.ndarray
    computed: int  # real (unpadded) positions the batches hold
    items: list[tuple[int, int]]


def model_inputs(prompts_by_pred_len: dict[int, SplitPrompts], windows: np.ndarray, fidelity: str,
                 batch_tokens: int, pin: bool = False) -> ModelInputs:
    """The windows' tries as batches (batches), on the CPU; with `pin` in page-locked memory, so
    that the copies to a GPU run asynchronously.

    Args:
        prompts_by_pred_len: the split's prompts per horizon P; window i exists at P when
            i < prompts.n_windows.
        windows: (W,) window indices, each existing at one horizon at least.
        fidelity: "reference" or "corrected".
        batch_tokens: the token budget (batches).
        pin: page-locked host memory.
    Returns:
        The ModelInputs.
    """
    tries, items, named, first_item, slots = [], [], [], [], []
    for position, window in enumerate(windows):
        trie, window_slots = packed_window(prompts_by_pred_len, int(window), fidelity)
        first_item.append(len(items))                           # the window's branches are items from here
        items += [(position, branch) for branch in range(len(trie.branches))]
        branch_of_variable = trie.leaf_of[:, 0, 0]
        named += [(position, int(np.argmax(branch_of_variable == branch))) for branch in range(len(trie.branches))]
        tries.append(trie)
        slots.append(window_slots)
    out = batches(tries, items, batch_tokens)
    most_leaves = max((len(branch.leaves) for trie in tries for branch in trie.branches), default=0)
    row_of_leaf = np.full((len(items), most_leaves), -1, np.int64)   # by (item, leaf index) first
    offset = 0
    for batch in out:
        row_of_leaf[batch.kept[:, 0], batch.kept[:, 1]] = offset + np.arange(len(batch.kept))
        offset += len(batch.kept)
    n_vars = tries[0].leaf_of.shape[0] if tries else 0
    rows_of = np.full((len(windows), n_vars, 2 * len(prompts_by_pred_len)), -1, np.int64)
    for position, (trie, first, window_slots) in enumerate(zip(tries, first_item, slots)):
        rows_of[position][:, window_slots] = row_of_leaf[first + trie.leaf_of[..., 0], trie.leaf_of[..., 1]]
    computed = sum(batch.real_positions() for batch in out)
    if pin:
        out = [batch.pin_memory() for batch in out]
    return ModelInputs(out, rows_of, computed, named)
