"""Held-out webdataset shards as a fixed set of batches, for the validation loss
(`evals.NAME = dict(kind="contrastive_loss", source="shards", shards=SPEC, batches=N)`).

The shards are read in order, unshuffled, with the training data's member keys and
tokenizer and the eval crop (no augmentation). Every process reads the same ordered
stream and decodes every process-count-th sample from it: the batches are the same
at every evaluation, and each process decodes only its own rows. Unreadable samples
are skipped (one summary line per shard) and the next of that process's samples
takes their place. Nothing is held between evaluations: host memory is one batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from clipjax.data.decode import eval_transform, parse_keys
from clipjax.data.pipeline import OrderedDecoder, PairDecoder
from clipjax.data.shards import DataStats, SampleStream, expand_urls
from clipjax.data.skips import ShardSkips, Skipped
from clipjax.data.tokenizers import Tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeldOutShards:
    """`batches` global batches of `batch_size` rows from `urls`; this process's rows."""

    name: str
    urls: tuple[str, ...]
    batches: int
    batch_size: int
    decoder: PairDecoder
    tokenizer: Tokenizer
    workers: int = 0
    process_index: int = 0
    process_count: int = 1

    @property
    def local_rows(self) -> int:
        return self.batch_size // self.process_count

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        """This process's rows of each batch: uint8 `image` crops and int32 `text` ids."""
        stats, skips = DataStats(), ShardSkips()
        stream = SampleStream(
            list(self.urls), seed=0, mode="once", shuffle_shards=False, stats=stats
        )
        mine = (s for i, s in enumerate(stream) if i % self.process_count == self.process_index)
        decoded = OrderedDecoder(self.decoder, self.workers)(enumerate(mine))
        images, texts, produced = [], [], 0
        for _, result in decoded:
            if isinstance(result, Skipped):
                skips.add(result)
                continue
            images.append(result[0])
            texts.append(result[1])
            if len(images) == self.local_rows:
                yield {"image": np.stack(images), "text": self.tokenizer(texts)}
                images, texts, produced = [], [], produced + 1
                if produced == self.batches:
                    break
        for line in skips.lines():
            log.warning("evals.%s: %s", self.name, line)
        if stats.failed_shards:
            raise RuntimeError(
                f"evals.{self.name}: {stats.failed_shards} held-out shard(s) could not be read "
                "(see the log); refusing to report a loss on part of the set"
            )
        if produced < self.batches:
            raise ValueError(
                f"evals.{self.name}: the held-out shards give {produced} of the {self.batches} "
                f"batches asked (batches x batch_size = {self.batches} x {self.batch_size} "
                f"readable samples; {skips.total} skipped): add shards or lower "
                f"evals.{self.name}.batches"
            )


def held_out_shards(
    name: str, spec: str, batches: int, batch_size: int, data_cfg, tokenizer: Tokenizer
) -> HeldOutShards:
    """The held-out set of `evals.NAME`, decoded as `data_cfg` decodes training samples
    (member keys, pixel limit, workers) with the eval crop."""
    import jax

    count = jax.process_count()
    if batch_size % count:
        raise ValueError(
            f"evals.{name}.batch_size={batch_size} is not divisible by the {count} processes"
        )
    decoder = PairDecoder(
        eval_transform(data_cfg),
        parse_keys(data_cfg.image_key),
        data_cfg.text_key,
        data_cfg.max_pixels,
        seed=(0,),
    )
    urls = tuple(expand_urls(spec))
    return HeldOutShards(
        name, urls, batches, batch_size, decoder, tokenizer, data_cfg.workers,
        jax.process_index(), count,
    )  # fmt: skip
