"""Blocks per pipeline stage: the plan's `stages=` field, its checks, and the splits the planner
writes.

`stages=7:8:8:8:8:8:8:8:8:8:8:8:8:8:8:7` gives the blocks of each virtual stage in order (pp
entries, or pp x interleave with interleave; virtual stage v runs on device v % pp). The counts
are whole numbers >= 0 that add up to the model's blocks; the embedding (and whatever runs before
the blocks) always joins virtual stage 0 and the head (with the loss) the last one. Without
`stages`, the split is even, or, when pp x interleave divides the blocks + 2 but not the blocks,
Llama 3's: the embedding and the head each stand in for one block, so the first and last virtual
stage hold one block fewer (`default_split`). Any other count needs `stages=` (or `dojo plan`,
which writes it).

`planner_splits` is the family of uneven splits the plan search considers (see
`dojo.sim.search`): the first and last virtual stage hold f and l blocks, each c - 2, c - 1 or
c with c = ceil(blocks / virtual stages) (room for the embedding and the head, which cost
about a block each on large vocabularies), and the blocks between, at least one each, are
spread as evenly as possible, the larger ones last (later stages hold fewer micro-batches in
flight under 1F1B). With two virtual stages the first holds c - 2 to c + 2 blocks.
The family contains the even split and Llama 3's split whenever they exist.
"""

from __future__ import annotations

from dojo.config import NUMBER_FORM, ascii_int, foreign_number
from dojo.errors import ConfigError


def parse_stages(raw: object, source: str = "--plan") -> list[int]:
    """`a:b:c` (or a single count) as a list of block counts; ConfigError names the item."""
    text = str(raw).strip()
    if isinstance(raw, bool) or not text:
        raise ConfigError(source, "stages", raw, "blocks per virtual stage as a:b:c, e.g. "
                          "stages=7:8:8:7")
    counts = []
    for item in text.split(":"):
        n = ascii_int(item)
        if n is None:
            raise ConfigError(source, "stages", text,
                              f"whole block counts separated by ':' ('{item}' is not one)"
                              + (f", in {NUMBER_FORM}" if foreign_number(item) else ""))
        if n < 0:
            raise ConfigError(source, "stages", text, f"block counts >= 0 ({n} is negative)")
        counts.append(n)
    return counts


def show_stages(stages: tuple[int, ...]) -> str:
    return ":".join(str(n) for n in stages)


def default_split(layers: int, chunks: int) -> list[int] | None:
    """Blocks per virtual stage without `stages=`: even, or (as Llama 3 was trained) with the
    embedding and the head each standing in for one block on the first and last virtual stage.
    None if neither divides."""
    if layers % chunks == 0:
        return [layers // chunks] * chunks
    if chunks >= 2 and (layers + 2) % chunks == 0:
        per = (layers + 2) // chunks
        return [per - 1] + [per] * (chunks - 2) + [per - 1]
    return None


def check_stages(stages: tuple[int, ...], pp: int, interleave: int, layers: int,
                 source: str = "--plan") -> None:
    """`stages` must list pp x interleave counts that add up to the model's blocks."""
    chunks = pp * interleave
    if len(stages) == chunks and sum(stages) == layers:
        return   # valid (the search asks this of millions of plans: no text built)
    text = show_stages(stages)
    if len(stages) != chunks:
        raise ConfigError(source, "stages", text,
                          f"one count per virtual stage: pp {pp} x interleave {interleave} = "
                          f"{chunks} counts, not {len(stages)}")
    if sum(stages) != layers:
        raise ConfigError(source, "stages", text,
                          f"counts that add up to the model's {layers} blocks "
                          f"({' + '.join(map(str, stages))} = {sum(stages)})")


def split_blocks(stages: tuple[int, ...], layers: int, chunks: int) -> list[int] | None:
    """The plan's blocks per virtual stage: its `stages` when given, else `default_split`."""
    return list(stages) if stages else default_split(layers, chunks)


def even_spread(blocks: int, parts: int) -> list[int]:
    """`blocks` over `parts` as evenly as possible, the larger counts last."""
    base, extra = divmod(blocks, parts)
    return [base] * (parts - extra) + [base + 1] * extra


def planner_splits(layers: int, chunks: int) -> list[tuple[int, ...]]:
    """The splits the plan search considers for `chunks` virtual stages (module docstring),
    each once, in a fixed order; empty when `chunks` exceeds blocks + 2 (a middle virtual
    stage would be empty)."""
    if chunks == 1:
        return [(layers,)]
    if chunks > layers + 2:
        return []
    c = -(-layers // chunks)
    out: list[tuple[int, ...]] = []
    if chunks == 2:   # two stages: the first holds c - 2 to c + 2 blocks, the last the rest
        return [(f, layers - f) for f in range(max(0, c - 2), min(layers, c + 2) + 1)]
    for first in range(max(0, c - 2), c + 1):
        for last in range(max(0, c - 2), c + 1):
            rest = layers - first - last
            if rest < 0:
                continue
            middle = even_spread(rest, chunks - 2)
            if min(middle) < 1:
                continue
            split = (first, *middle, last)
            if split not in out:
                out.append(split)
    return out
