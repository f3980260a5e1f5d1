"""One progress bar for a run: shards done, tokens/s, ETA (by sentences, which are known upfront)."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from langneurons.shards import Shard


class ShardProgress:
    def __init__(self, shards: list[Shard], *, enabled: bool = True):
        self.total_shards = len(shards)
        self.done_shards = 0
        self.tokens = 0
        self.t0 = time.perf_counter()
        self.bar = tqdm(total=sum(s.stop - s.start for s in shards), unit="sent", disable=not enabled,
                        desc="profiling", dynamic_ncols=True, file=sys.stderr, mininterval=1.0)

    def update(self, shard: Shard, n_tokens: int) -> None:
        self.done_shards += 1
        self.tokens += n_tokens
        rate = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"shards {self.done_shards}/{self.total_shards}, {rate:,.0f} tok/s",
                                 refresh=False)
        self.bar.update(shard.stop - shard.start)

    def __enter__(self) -> "ShardProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
