"""The commit graph of ``tvcs log --graph`` / ``--all``: the order of the commits and the
drawing on their left.

The drawing is a list of *lanes*, left to right: a lane is an edge on its way down to the
commit it names. Lane ``i`` sits at text column ``2 i``; the odd columns between lanes hold
the strokes of lanes that change place. Every row of the drawing is one of:

- a *commit row*: ``*`` on the commit's lane, ``|`` on every other lane. A commit with
  ``k > 2`` parents is drawn ``k - 2`` lanes wide (``*-.-.``), each ``.`` a point where one
  more parent's edge leaves;
- a *move row*: each lane goes from its place in the row above to its place in the row
  below: ``|`` straight down, ``\\`` one place right, ``/`` one place left. A lane that moves
  further runs along the bottom of the row with ``_`` to its new place, under the lanes that
  go straight (``|_|/``: the right lane crosses the middle one to join the left one).

Lanes that reach the same place join (two edges to one commit); lanes to different commits
never share a place or a stroke. After a commit, its lane is replaced by one lane per parent
(fanned out on the row below it), and a parent that had a lane already is joined into it,
one join per row, so that every commit is named by one lane when its turn comes (a merge's
last parent whose lane is right beside the merge is joined on the fan-out row itself). A
commit without parents ends its lane; a new line of descent that would start in the same
place right below it is kept apart by one row of lanes alone.

The symbols are the ones ``git log --graph`` uses, so the picture reads the same way; the
layout is this module's own (tests/cli/test_log_graph.py reads the drawing back into edges
and checks them against the commits' parents).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence


def _reachable(starts: Iterable[str], parents_of: Callable[[str], Sequence[str]]) -> list[str]:
    found = list(dict.fromkeys(starts))
    seen = set(found)
    i = 0
    while i < len(found):
        for p in parents_of(found[i]):
            if p not in seen:
                seen.add(p)
                found.append(p)
        i += 1
    return found


def topo_order(
    starts: Iterable[str], parents_of: Callable[[str], Sequence[str]], time_of: Callable[[str], str]
) -> list[str]:
    """Every commit reachable from ``starts``, no commit before one of its descendants, and
    one line of descent followed to its end before the next is taken up (the order of
    ``git log --topo-order``): the newest commit whose children are all shown comes next,
    except that a commit whose last child was just shown comes at once (the last parent of
    a merge first)."""
    found = _reachable(starts, parents_of)
    children_left = dict.fromkeys(found, 0)
    for oid in found:
        for p in parents_of(oid):
            children_left[p] += 1
    ready = sorted((o for o in found if not children_left[o]), key=time_of)  # newest last
    out: list[str] = []
    while ready:
        oid = ready.pop()
        out.append(oid)
        for p in parents_of(oid):
            children_left[p] -= 1
            if not children_left[p]:
                ready.append(p)
    return out


def date_order(
    starts: Iterable[str], parents_of: Callable[[str], Sequence[str]], time_of: Callable[[str], str]
) -> list[str]:
    """Every commit reachable from ``starts``, newest first by timestamp (``tvcs log``)."""
    return sorted(_reachable(starts, parents_of), key=time_of, reverse=True)


Move = tuple[int, int]  # a lane's place in the row above and in the row below


def _move_row(moves: Sequence[Move]) -> str:
    """The row that takes every lane from its first place to its second."""
    size = 2 * max((max(m) for m in moves), default=-1) + 1
    row = [" "] * size
    strokes: set[int] = set()

    def stroke(x: int, ch: str) -> None:
        if x in strokes:
            raise AssertionError(f"two strokes at column {x} of {moves}")
        strokes.add(x)
        row[x] = ch

    for a, b in moves:
        if a == b:
            row[2 * a] = "|"
    for a, b in moves:
        if b > a:
            stroke(2 * a + 1, "\\")
            run = range(2 * a + 2, 2 * b)
        elif b < a:
            stroke(2 * a - 1, "/")
            run = range(2 * b + 1, 2 * a - 1)
        else:
            continue
        for x in run:
            if x % 2:
                stroke(x, "_")
            elif row[x] == " ":
                row[x] = "_"
    return "".join(row).rstrip()


class Graph:
    """Draws the graph one commit at a time, newest first (``lines``)."""

    def __init__(self) -> None:
        self.lanes: list[str] = []  # the commit each lane leads to, left to right
        self.ended: int | None = None  # the place of the commit just drawn, if it had no parents

    def _idle(self) -> str:
        return " ".join("|" * len(self.lanes))

    def lines(self, oid: str, parents: Sequence[str], text: Sequence[str]) -> list[str]:
        """The output lines of one commit: the graph rows that lead into it, its commit row
        with ``text[0]``, and the rows that lead out of it beside the rest of ``text`` (the
        lanes alone beside the text left over)."""
        before, row, after = self._rows(oid, list(dict.fromkeys(parents)))
        width = max(len(r) for r in [*before, row, *after, self._idle()])
        out = list(before)
        out.append(row.ljust(width) + " " + text[0])
        for i, t in enumerate(text[1:]):
            g = after[i] if i < len(after) else self._idle()
            out.append(g.ljust(width) + " " + t)
        out += after[len(text) - 1 :]
        return [s.rstrip() for s in out]

    def padding(self) -> str:
        """The graph part of a line between two commits (the blank line of ``log``)."""
        self.ended = None
        return self._idle()

    def _rows(self, oid: str, parents: list[str]) -> tuple[list[str], str, list[str]]:
        lanes = self.lanes
        before: list[str] = []
        if oid not in lanes:
            if self.ended == len(lanes):  # right below a commit without parents: keep apart
                before.append(self._idle())
            lanes.append(oid)  # a tip: a new lane on the right
        col = lanes.index(oid)
        n, k = len(lanes), len(parents)
        self.ended = None if k else col
        wide = max(k - 2, 0)  # lanes the commit row covers right of its own
        # make room for a wide commit: the lanes on its right step aside, one place a row
        for r in range(wide if col + 1 < n else 0):
            stay = [(i, i) for i in range(col + 1)]
            before.append(_move_row(stay + [(i + r, i + r + 1) for i in range(col + 1, n)]))
        shift = [i + wide if i > col else i for i in range(n)]  # places in the commit row
        row = [" "] * (2 * max(shift[-1], col + wide) + 1)
        for i in range(n):
            row[2 * shift[i]] = "|"
        row[2 * col] = "*"
        for x in range(2 * col + 1, 2 * (col + wide) + 1):
            row[x] = "." if x % 2 == 0 else "-"
        # fan out: parent j leaves from place col + j - 1 of the commit (col for the first)
        moves: list[Move] = [(i, i) for i in range(col)]
        moves += [(col + max(j - 1, 0), col + j) for j in range(k)]
        # a merge whose last parent has the lane just right of it joins that lane at once
        reuse = k >= 2 and col + 1 < n and lanes[col + 1] == parents[-1]
        moves += [(shift[i], i + k - 1 - reuse) for i in range(col + 1, n)]
        self.lanes = lanes = lanes[:col] + parents[: k - reuse] + lanes[col + 1 :]
        after = [] if all(a == b for a, b in moves) else [_move_row(moves)]
        # join each parent that already had a lane: the right lane moves to the left one
        while True:
            first: dict[str, int] = {}
            join = None
            for i, target in enumerate(lanes):
                if target in first:
                    join = (i, first[target])
                    break
                first[target] = i
            if join is None:
                break
            a, b = join
            join_moves = [(i, i) for i in range(a)] + [(a, b)]
            join_moves += [(i, i - 1) for i in range(a + 1, len(lanes))]
            after.append(_move_row(join_moves))
            del lanes[a]
        return before, "".join(row).rstrip(), after
