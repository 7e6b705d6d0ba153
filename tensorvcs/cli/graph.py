"""The commit graph of ``tvcs log --graph`` / ``--all``: topological order and the drawing.

The drawing follows git's (graph.c, ``git log --graph``): one column per line of descent,
``*`` for a commit, ``|``, ``/``, ``\\`` and ``_`` for edges, a merge's parents fanned out on
the line after it and lines collapsing to the left as they meet. The state machine is the
same as git's (padding, pre-commit, commit, post-merge, collapsing), so that the same graph
is drawn the same way: tests/cli/test_log_graph.py compares the two line by line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

PADDING, PRE_COMMIT, COMMIT, POST_MERGE, COLLAPSING = range(5)
_MERGE_CHARS = "/|\\"


def topo_order(
    starts: Iterable[str], parents_of: Callable[[str], Sequence[str]], time_of: Callable[[str], str]
) -> list[str]:
    """Every commit reachable from ``starts``, newest first, no commit before one of its
    descendants, and one line of descent shown to its end before the next (git's
    ``--topo-order``: tips by date, then depth first, a merge's last parent first)."""
    seen: set[str] = set()
    stack = [s for s in dict.fromkeys(starts)]
    seen.update(stack)
    while stack:
        oid = stack.pop()
        for p in parents_of(oid):
            if p not in seen:
                seen.add(p)
                stack.append(p)
    by_date = sorted(seen, key=time_of, reverse=True)
    indegree = dict.fromkeys(by_date, 1)
    for oid in by_date:
        for p in parents_of(oid):
            indegree[p] += 1
    todo = [oid for oid in by_date if indegree[oid] == 1]
    todo.reverse()  # a stack: the newest tip comes off first
    out: list[str] = []
    while todo:
        oid = todo.pop()
        for p in parents_of(oid):
            indegree[p] -= 1
            if indegree[p] == 1:
                todo.append(p)
        out.append(oid)
    return out


def date_order(
    starts: Iterable[str], parents_of: Callable[[str], Sequence[str]], time_of: Callable[[str], str]
) -> list[str]:
    """Every commit reachable from ``starts``, newest first by timestamp (``tvcs log``)."""
    seen = set(starts)
    stack = list(seen)
    while stack:
        for p in parents_of(stack.pop()):
            if p not in seen:
                seen.add(p)
                stack.append(p)
    return sorted(seen, key=time_of, reverse=True)


class Graph:
    """Draws the graph one commit at a time (``lines``), as git's graph.c does."""

    def __init__(self) -> None:
        self.columns: list[str] = []
        self.new_columns: list[str] = []
        self.mapping: list[int] = []
        self.old_mapping: list[int] = []
        self.mapping_size = 0
        self.state = PADDING
        self.prev_state = PADDING
        self.commit = ""
        self.parents: list[str] = []
        self.width = 0
        self.expansion_row = 0
        self.commit_index = 0
        self.prev_commit_index = 0
        self.merge_layout = 0
        self.edges_added = 0
        self.prev_edges_added = 0

    # -- layout ----------------------------------------------------------------------------
    @property
    def num_parents(self) -> int:
        return len(self.parents)

    def _set_state(self, s: int) -> None:
        self.prev_state, self.state = self.state, s

    def _find_new(self, oid: str) -> int:
        try:
            return self.new_columns.index(oid)
        except ValueError:
            return -1

    def _insert(self, oid: str, idx: int) -> None:
        i = self._find_new(oid)
        if i < 0:
            i = len(self.new_columns)
            self.new_columns.append(oid)
        if self.num_parents > 1 and idx > -1 and self.merge_layout == -1:
            dist = idx - i
            shift = 2 * dist - 3 if dist > 1 else 1
            self.merge_layout = 0 if dist > 0 else 1
            self.edges_added = self.num_parents + self.merge_layout - 2
            mapping_idx = self.width + (self.merge_layout - 1) * shift
            self.width += 2 * self.merge_layout
        elif self.edges_added > 0 and self.width >= 2 and i == self.mapping[self.width - 2]:
            mapping_idx = self.width - 2
            self.edges_added = -1
        else:
            mapping_idx = self.width
            self.width += 2
        self.mapping[mapping_idx] = i

    def update(self, oid: str, parents: Sequence[str]) -> None:
        """Make ``oid`` (with these parents, those shown in the graph) the next commit."""
        self.commit = oid
        self.parents = list(dict.fromkeys(parents))
        self.prev_commit_index = self.commit_index
        self.columns, self.new_columns = self.new_columns, []
        max_new = len(self.columns) + self.num_parents
        self.mapping_size = 2 * max_new
        self.mapping = [-1] * self.mapping_size
        if len(self.old_mapping) < self.mapping_size:
            self.old_mapping += [-1] * (self.mapping_size - len(self.old_mapping))
        self.width = 0
        self.prev_edges_added, self.edges_added = self.edges_added, 0
        seen_this = False
        in_columns = True
        for i in range(len(self.columns) + 1):
            if i == len(self.columns):
                if seen_this:
                    break
                in_columns = False
                col = oid
            else:
                col = self.columns[i]
            if col == oid:
                seen_this = True
                self.commit_index = i
                self.merge_layout = -1
                for p in self.parents:
                    self._insert(p, i)
                if not self.parents:
                    self.width += 2
            else:
                self._insert(col, -1)
        del in_columns  # git changes colours here; the drawing has none
        while self.mapping_size > 1 and self.mapping[self.mapping_size - 1] < 0:
            self.mapping_size -= 1
        self.expansion_row = 0
        if self._needs_pre_commit():
            self.state = PRE_COMMIT
        else:
            self.state = COMMIT

    def _dashed_parents(self) -> int:
        return self.num_parents + self.merge_layout - 3

    def _needs_pre_commit(self) -> bool:
        return (
            self.num_parents >= 3
            and self.commit_index < len(self.columns) - 1
            and self.expansion_row < self._dashed_parents() * 2
        )

    def _mapping_correct(self) -> bool:
        return all(t < 0 or t == i // 2 for i, t in enumerate(self.mapping[: self.mapping_size]))

    def _pad(self, line: list[str]) -> str:
        s = "".join(line)
        return s + " " * (self.width - len(s))

    # -- lines -----------------------------------------------------------------------------
    def finished(self) -> bool:
        return self.state == PADDING

    def next_line(self) -> tuple[str, bool]:
        """(the next line's graph part, whether it is the commit's own line)."""
        if self.state == PADDING:
            return self._padding_line(), False
        if self.state == PRE_COMMIT:
            return self._pre_commit_line(), False
        if self.state == COMMIT:
            return self._commit_line(), True
        if self.state == POST_MERGE:
            return self._post_merge_line(), False
        return self._collapsing_line(), False

    def _padding_line(self) -> str:
        return "".join("| " for _ in self.new_columns)

    def _pre_commit_line(self) -> str:
        line: list[str] = []
        seen_this = False
        for i, col in enumerate(self.columns):
            if col == self.commit:
                seen_this = True
                line.append("|" + " " * self.expansion_row)
            elif seen_this and self.expansion_row == 0:
                after_merge = self.prev_state == POST_MERGE and self.prev_commit_index < i
                line.append("\\" if after_merge else "|")
            elif seen_this:
                line.append("\\")
            else:
                line.append("|")
            line.append(" ")
        out = self._pad(line)
        self.expansion_row += 1
        if not self._needs_pre_commit():
            self._set_state(COMMIT)
        return out

    def _commit_line(self) -> str:
        line: list[str] = []
        seen_this = False
        for i in range(len(self.columns) + 1):
            if i == len(self.columns):
                if seen_this:
                    break
                col = self.commit
            else:
                col = self.columns[i]
            if col == self.commit:
                seen_this = True
                line.append("*")
                if self.num_parents > 2:
                    dashed = self._dashed_parents()
                    for k in range(dashed):
                        line.append("-" + ("." if k == dashed - 1 else "-"))
            elif seen_this and self.edges_added > 1:
                line.append("\\")
            elif seen_this and self.edges_added == 1:
                after_merge = (
                    self.prev_state == POST_MERGE
                    and self.prev_edges_added > 0
                    and self.prev_commit_index < i
                )
                line.append("\\" if after_merge else "|")
            elif (
                self.prev_state == COLLAPSING
                and _at(self.old_mapping, 2 * i + 1) == i
                and _at(self.mapping, 2 * i) < i
            ):
                line.append("/")
            else:
                line.append("|")
            line.append(" ")
        out = self._pad(line)
        if self.num_parents > 1:
            self._set_state(POST_MERGE)
        elif self._mapping_correct():
            self._set_state(PADDING)
        else:
            self._set_state(COLLAPSING)
        return out

    def _post_merge_line(self) -> str:
        line: list[str] = []
        seen_this = False
        parent_col: str | None = None
        first = self.parents[0]
        for i in range(len(self.columns) + 1):
            if i == len(self.columns):
                if seen_this:
                    break
                col = self.commit
            else:
                col = self.columns[i]
            if col == self.commit:
                seen_this = True
                idx = self.merge_layout
                for j, _p in enumerate(self.parents):
                    line.append(_MERGE_CHARS[idx])
                    if idx == 2:
                        if self.edges_added > 0 or j < self.num_parents - 1:
                            line.append(" ")
                    else:
                        idx += 1
                if self.edges_added == 0:
                    line.append(" ")
            elif seen_this:
                line.append("\\ " if self.edges_added > 0 else "| ")
            else:
                line.append("|")
                if self.merge_layout != 0 or i != self.commit_index - 1:
                    line.append("_" if parent_col is not None else " ")
            if col == first:
                parent_col = col
        out = self._pad(line)
        self._set_state(PADDING if self._mapping_correct() else COLLAPSING)
        return out

    def _collapsing_line(self) -> str:
        size = self.mapping_size
        self.mapping, self.old_mapping = self.old_mapping, self.mapping
        for i in range(size):
            self.mapping[i] = -1
        horizontal_edge = -1
        horizontal_target = -1
        for i in range(size):
            target = self.old_mapping[i]
            if target < 0:
                continue
            if target * 2 == i:
                self.mapping[i] = target
            elif self.mapping[i - 1] < 0:
                self.mapping[i - 1] = target
                if horizontal_edge == -1:
                    horizontal_edge = i
                    horizontal_target = target
                    for j in range(target * 2 + 3, i - 2, 2):
                        self.mapping[j] = target
            elif self.mapping[i - 1] == target:
                pass
            else:
                self.mapping[i - 2] = target
                if horizontal_edge == -1:
                    horizontal_target = target
                    horizontal_edge = i - 1
                    for j in range(target * 2 + 3, i - 2, 2):
                        self.mapping[j] = target
        self.old_mapping[:size] = self.mapping[:size]
        if self.mapping[size - 1] < 0:
            self.mapping_size = size = size - 1
        line: list[str] = []
        used_horizontal = False
        for i in range(size):
            target = self.mapping[i]
            if target < 0:
                line.append(" ")
            elif target * 2 == i:
                line.append("|")
            elif target == horizontal_target and i != horizontal_edge - 1:
                if i != target * 2 + 3:
                    self.mapping[i] = -1
                used_horizontal = True
                line.append("_")
            else:
                if used_horizontal and i < horizontal_edge:
                    self.mapping[i] = -1
                line.append("/")
        out = self._pad(line)
        if self._mapping_correct():
            self._set_state(PADDING)
        return out

    def lines(self, oid: str, parents: Sequence[str], text: Sequence[str]) -> list[str]:
        """The output lines of one commit: its text (``text[0]`` on the commit's line) with
        the graph before each line, and the graph lines that lead into and out of it."""
        self.update(oid, parents)
        out: list[str] = []
        while True:
            prefix, is_commit = self.next_line()
            if is_commit:
                out.append(prefix + text[0])
                break
            out.append(prefix)
        for t in text[1:]:
            out.append(self.next_line()[0] + t)
        while not self.finished():
            out.append(self.next_line()[0])
        return [s.rstrip() for s in out]

    def padding(self) -> str:
        """The graph part of a line between two commits (the blank line of ``log``)."""
        return self.next_line()[0].rstrip() if self.finished() else ""


def _at(a: list[int], i: int) -> int:
    return a[i] if 0 <= i < len(a) else -1
