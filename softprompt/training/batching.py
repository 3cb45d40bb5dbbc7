"""Length-bucketed training batches, so a step pads its inputs less.

Why. A batch is padded to its longest input. On tasks whose input lengths have a long tail, a
step of randomly drawn examples usually holds one long input, and every other row is padded up
to it. Most of the compute then goes into padding.

What changes. Only which examples share a step. Each epoch is still a seeded permutation of the
examples (the same one `loop.batch_indices` walks). The permutation is cut into windows of
`window_batches` batches, each window is sorted by input length, and the sorted windows are cut
into batches. So a batch holds neighbours in length among `window_batches` (50) batches of randomly
drawn examples. The order of the epoch's batches is then shuffled with a second seeded generator,
so long and short batches alternate at random instead of the run climbing from short to long.

What stays.
- Every example is seen exactly once per epoch.
- Every step has exactly `batch_size` examples. As in `loop.batch_indices`, the epochs form one
  stream that steps walk in order, so the last step of an epoch is completed from the start of
  the next one. Each epoch places the examples that fall in such a boundary step at its two ends,
  taken from the long end of its last window, so the boundary step pads little too.
- The expected gradient of a step is unchanged up to correlations. A whole batch is equally
  likely to come at any step of its epoch, and which window an example falls in is random. What
  changes is that the examples of one step are similar in length, and the epoch's boundary steps
  lean to long examples.
- The batches are a pure function of (lengths, batch_size, step, seed, window_batches), so a
  resumed run sees exactly the batches the killed run would have.

`BucketedOrder` builds an epoch's layout once (a permutation, a sort per window, a shuffle of the
batch order) and keeps the last two epochs, which is all a walk through the steps needs.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterable, Sequence


class BucketedOrder:
    """The example indices of every optimizer step, bucketed by length (see the module docstring).

    `lengths[i]` is the input length of example i, in tokens. A window is `window_batches`
    batches of consecutive examples of the epoch's permutation."""

    def __init__(
        self, lengths: Sequence[int], batch_size: int, seed: int, window_batches: int = 50
    ) -> None:
        if not lengths:
            raise ValueError("bucketed batches need at least one example")
        if batch_size < 1 or window_batches < 1:
            raise ValueError(
                f"batch_size ({batch_size}) and window_batches ({window_batches}) must be >= 1"
            )
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.window_batches = window_batches
        # A step reads at most two epochs when there are at least batch_size examples.
        self._epoch = functools.lru_cache(maxsize=2)(self._layout)

    @property
    def n(self) -> int:
        return len(self.lengths)

    def step(self, step: int) -> list[int]:
        """Example indices of optimizer step `step` (from 0), the next batch_size positions of
        the stream of epoch layouts, read the way `loop.batch_indices` reads its permutations."""
        out: list[int] = []
        start = step * self.batch_size
        while len(out) < self.batch_size:
            epoch, offset = divmod(start + len(out), self.n)
            layout = self._epoch(epoch)
            out.extend(layout[offset : offset + self.batch_size - len(out)])
        return out

    def _layout(self, epoch: int) -> list[int]:
        """Epoch `epoch`'s examples in stream order, each exactly once.

        The first `head` of them complete the step begun by the previous epoch, and the last
        `tail` begin the step the next epoch completes. All others form whole batches, aligned
        to step boundaries, whose order is shuffled."""
        n, size = self.n, self.batch_size
        order = list(range(n))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        window = self.window_batches * size
        by_length = self.lengths.__getitem__
        ranked: list[int] = []
        for k in range(0, n, window):
            ranked.extend(sorted(order[k : k + window], key=by_length))  # stable
        # The boundary steps take the long end of the last window, so they pad little too.
        head = min((-epoch * n) % size, n)
        tail = (n - head) % size
        whole = n - head - tail  # a multiple of size
        batches = [ranked[k : k + size] for k in range(0, whole, size)]
        random.Random(f"bucketed batch order {self.seed} {epoch}").shuffle(batches)
        layout = ranked[whole : whole + head]
        for batch in batches:
            layout.extend(batch)
        layout.extend(ranked[whole + head :])
        return layout


# The order last asked for through bucketed_batch_indices. A training run asks for every step of
# the same lengths, and rebuilding an epoch per step would cost a permutation and a sort each time.
_last: list[BucketedOrder] = []


def bucketed_batch_indices(
    lengths: Sequence[int], batch_size: int, step: int, seed: int, window_batches: int = 50
) -> list[int]:
    """Example indices of optimizer step `step`, bucketed by length; the same as
    `BucketedOrder(lengths, batch_size, seed, window_batches).step(step)`.

    The last order is reused when the arguments are equal. Comparing the lengths is a linear scan,
    far cheaper than rebuilding an epoch."""
    cached = _last[0] if _last else None
    if (
        cached is None
        or (cached.batch_size, cached.seed, cached.window_batches)
        != (batch_size, seed, window_batches)
        or cached.lengths != (lengths if isinstance(lengths, list) else list(lengths))
    ):
        cached = BucketedOrder(lengths, batch_size, seed, window_batches)
        _last[:] = [cached]
    return cached.step(step)


def padding_fraction(batch_lengths: Iterable[Sequence[int]]) -> float:
    """Padded tokens / all tokens of the padded batches, each batch given as its rows' lengths.

    A batch of rows [3, 5, 8] is padded to [3, 8] (24 tokens), 8 of them padding, so 1/3."""
    padded = 0
    total = 0
    for rows in batch_lengths:
        if rows:
            width = max(rows)
            total += width * len(rows)
            padded += width * len(rows) - sum(rows)
    return padded / total if total else 0.0
