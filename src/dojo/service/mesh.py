"""The machine as the scheduler sees it: its tiles on the 2D mesh, and rectangles of them.

A Dojo system's tiles form one global mesh: the `mesh2d` levels above the tile compose (a V1
tray is 2 x 3 tiles; an ExaPOD is cabinets of 2 trays stacked, 10 cabinets in a row: 4 x 30).
A job is gang-allocated a contiguous rectangle of tiles, so its collectives stay on tile edges
and never cross another job's tiles. `Grid` is the occupancy map one scheduling pass works on;
it answers "is this rectangle free" in O(1) from a prefix-sum table rebuilt on change.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from dojo.errors import ConfigError

Cell = tuple[int, int]


@dataclass(frozen=True)
class Machine:
    """`rows` x `cols` tiles on a 2D mesh (no wraparound)."""

    rows: int
    cols: int
    name: str = ""

    @property
    def tiles(self) -> int:
        return self.rows * self.cols


@dataclass(frozen=True)
class Rect:
    """Tiles [row, row + rows) x [col, col + cols)."""

    row: int
    col: int
    rows: int
    cols: int

    @property
    def size(self) -> int:
        return self.rows * self.cols

    def cells(self) -> Iterator[Cell]:
        for r in range(self.row, self.row + self.rows):
            for c in range(self.col, self.col + self.cols):
                yield (r, c)

    def overlaps(self, other: Rect) -> bool:
        return not (self.row + self.rows <= other.row or other.row + other.rows <= self.row
                    or self.col + self.cols <= other.col or other.col + other.cols <= self.col)

    def to_json(self) -> list[int]:
        return [self.row, self.col, self.rows, self.cols]


def machine_of(spec: Any) -> Machine:
    """The tile mesh of a Dojo `SystemSpec`: the grids of the levels above `tile` composed
    (tray 2 x 3 -> V1 2 x 3; x cabinet 2 x 1 x pod 1 x 10 -> ExaPOD 4 x 30)."""
    names = [lv.name for lv in spec.levels]
    if "tile" not in names:
        raise ConfigError(spec.path or spec.name, "hierarchy", list(spec.level_names),
                          "a Dojo system with a 'tile' level (the scheduler allocates tiles)")
    rows = cols = 1
    for lv in spec.levels[names.index("tile") + 1:]:
        if lv.spec.topology != "mesh2d":
            raise ConfigError(spec.path or spec.name, f"{lv.name}.topology", lv.spec.topology,
                              "mesh2d above the tile (the scheduler allocates mesh rectangles)")
        r, c = lv.spec.grid or (1, lv.spec.count)
        rows, cols = rows * r, cols * c
    return Machine(rows, cols, spec.name)


@lru_cache(maxsize=4096)
def shapes(tiles: int, rows: int, cols: int) -> tuple[tuple[int, int], ...]:
    """Rectangles (h, w) that hold `tiles` on a rows x cols mesh, squarest first (the smallest
    mesh diameter). Exact factorisations when any fits; otherwise the smallest h * w >= tiles
    (the surplus tiles idle with the job). Empty when `tiles` exceeds the machine."""
    if tiles < 1 or tiles > rows * cols:
        return ()
    exact = [(h, tiles // h) for h in range(1, rows + 1)
             if tiles % h == 0 and tiles // h <= cols]
    if not exact:
        best = min(h * -(-tiles // h) for h in range(1, rows + 1) if -(-tiles // h) <= cols)
        exact = [(h, best // h) for h in range(1, rows + 1)
                 if best % h == 0 and best // h <= cols]
    return tuple(sorted(exact, key=lambda hw: (abs(hw[0] - hw[1]), hw[0])))


class Grid:
    """Occupancy of one machine during one scheduling pass: cell -> job id or None."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.owner: list[list[str | None]] = [[None] * machine.cols for _ in range(machine.rows)]
        self._sums: list[list[int]] | None = None

    def copy(self) -> Grid:
        g = Grid(self.machine)
        g.owner = [row[:] for row in self.owner]
        return g

    def set(self, cells: Iterable[Cell], job: str | None) -> None:
        for r, c in cells:
            self.owner[r][c] = job
        self._sums = None

    def free_cells(self) -> list[Cell]:
        return [(r, c) for r in range(self.machine.rows) for c in range(self.machine.cols)
                if self.owner[r][c] is None]

    def _table(self) -> list[list[int]]:
        if self._sums is None:
            rows, cols = self.machine.rows, self.machine.cols
            s = [[0] * (cols + 1) for _ in range(rows + 1)]
            for r in range(rows):
                acc = 0
                for c in range(cols):
                    acc += self.owner[r][c] is not None
                    s[r + 1][c + 1] = s[r][c + 1] + acc
            self._sums = s
        return self._sums

    def is_free(self, rect: Rect) -> bool:
        s = self._table()
        r0, c0, r1, c1 = rect.row, rect.col, rect.row + rect.rows, rect.col + rect.cols
        return s[r1][c1] - s[r0][c1] - s[r1][c0] + s[r0][c0] == 0

    def _contact(self, rect: Rect) -> int:
        """Perimeter cells of `rect` that touch a border or a used tile: packing against what is
        already there keeps the free space in few, large rectangles."""
        rows, cols, own = self.machine.rows, self.machine.cols, self.owner
        n = 0
        for c in range(rect.col, rect.col + rect.cols):
            for r in (rect.row - 1, rect.row + rect.rows):
                n += not 0 <= r < rows or own[r][c] is not None
        for r in range(rect.row, rect.row + rect.rows):
            for c in (rect.col - 1, rect.col + rect.cols):
                n += not 0 <= c < cols or own[r][c] is not None
        return n

    def find(self, tiles: int, avoid: Rect | None = None) -> Rect | None:
        """The best free rectangle for `tiles` (most contact, then top-left), not overlapping
        `avoid`; None when none is free."""
        best: tuple[int, int, int, int] | None = None
        found = None
        for h, w in shapes(tiles, self.machine.rows, self.machine.cols):
            for r in range(self.machine.rows - h + 1):
                for c in range(self.machine.cols - w + 1):
                    rect = Rect(r, c, h, w)
                    if not self.is_free(rect) or (avoid is not None and rect.overlaps(avoid)):
                        continue
                    key = (-self._contact(rect), h * w, r, c)
                    if best is None or key < best:
                        best, found = key, rect
            if found is not None and found.size == tiles:
                return found  # the squarest exact shape that fits
        return found

    def largest_free_rect(self) -> int:
        """Tiles in the largest free rectangle (histogram method, O(rows x cols))."""
        heights = [0] * self.machine.cols
        best = 0
        for r in range(self.machine.rows):
            for c in range(self.machine.cols):
                heights[c] = heights[c] + 1 if self.owner[r][c] is None else 0
            stack: list[int] = []
            for c in range(self.machine.cols + 1):
                h = heights[c] if c < self.machine.cols else 0
                while stack and heights[stack[-1]] >= h:
                    top = heights[stack.pop()]
                    left = stack[-1] + 1 if stack else 0
                    best = max(best, top * (c - left))
                stack.append(c)
        return best
