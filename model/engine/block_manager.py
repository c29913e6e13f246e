"""Paged KV-cache accounting (no torch): a pool of fixed-size blocks, ref counts, and a prefix cache.

A full block whose K/V has been computed is registered under a chained hash of its tokens (the hash of
the previous block and this block's token ids), so two prompts that share a prefix share its blocks.
Freed blocks keep their hash and sit in an LRU free queue; a cached block is evicted only when a fresh
block is taken from the front of that queue. Every mutating call is check-then-change: a refused
allocation leaves nothing behind.
"""
from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass

from model.engine.sequence import Sequence


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: bytes | None = None
    token_ids: tuple[int, ...] = ()  # kept to rule out hash collisions


def chain_hash(prev_hash: bytes | None, token_ids: list[int] | tuple[int, ...]) -> bytes:
    h = hashlib.blake2b(prev_hash or b"", digest_size=16)
    h.update(array("q", token_ids).tobytes())
    return h.digest()


def root_hash(seq: Sequence) -> bytes | None:
    """The chain's start: None for the bare base, the adapter's load id under a LoRA adapter, so K/V
    computed through one adapter is never served to another (or to the base)."""
    return None if not seq.lora_id else b"lora:%d" % seq.lora_id


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))  # LRU order
        self.cached: dict[bytes, int] = {}  # block hash -> block id
        self.prefix_queries = 0  # prompt tokens looked up
        self.prefix_hits = 0  # prompt tokens found

    # ---- queries -----------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def usage(self) -> float:
        return 1.0 - len(self.free) / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _cached_prefix(self, seq: Sequence) -> list[int]:
        """Block ids of the longest cached run of full blocks at the start of seq's tokens. The last
        token is never taken from the cache: its logits must be computed. Nor is anything for a sequence
        that still needs prompt logprobs: cached blocks hold K/V, not the logits that score the prompt."""
        if not self.enable_prefix_caching or seq.needs_all_positions:
            return []
        hits: list[int] = []
        prev: bytes | None = root_hash(seq)
        bs = self.block_size
        for i in range((seq.num_tokens - 1) // bs):
            tokens = tuple(seq.token_ids[i * bs:(i + 1) * bs])
            prev = chain_hash(prev, tokens)
            block_id = self.cached.get(prev)
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            hits.append(block_id)
        return hits

    # ---- admission ---------------------------------------------------------------------------------
    def allocate(self, seq: Sequence) -> bool:
        """Gives seq blocks for all its current tokens, reusing cached prefix blocks. False (and no
        change) when the pool cannot hold it now."""
        hits = self._cached_prefix(seq)
        num_new = self.blocks_needed(seq.num_tokens) - len(hits)
        free_hits = sum(1 for b in hits if self.blocks[b].ref_count == 0)
        if num_new > len(self.free) - free_hits:
            return False
        for block_id in hits:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free[block_id]
            block.ref_count += 1
        seq.block_table = hits + [self._take_free_block() for _ in range(num_new)]
        seq.block_hashes = [self.blocks[b].block_hash for b in hits]
        seq.num_computed_tokens = len(hits) * self.block_size
        if not seq.admitted_once:
            self.prefix_queries += seq.num_tokens
            self.prefix_hits += seq.num_computed_tokens
            seq.num_cached_tokens = seq.num_computed_tokens
            seq.admitted_once = True
        return True

    def _take_free_block(self) -> int:
        block_id, _ = self.free.popitem(last=False)  # least recently freed first
        block = self.blocks[block_id]
        if block.block_hash is not None and self.cached.get(block.block_hash) == block_id:
            del self.cached[block.block_hash]  # evict from the prefix cache
        block.block_hash, block.token_ids, block.ref_count = None, (), 1
        return block_id

    # ---- growth during decode ----------------------------------------------------------------------
    def can_grow(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.blocks_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table) <= len(self.free)

    def grow(self, seq: Sequence, num_new_tokens: int) -> None:
        """Makes room for num_new_tokens more computed tokens (call can_grow first)."""
        needed = self.blocks_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        if needed > len(self.free):
            raise RuntimeError("grow() without can_grow(): out of KV blocks")
        seq.block_table += [self._take_free_block() for _ in range(needed)]

    # ---- after a step: register newly full, computed blocks ------------------------------------------
    def register_full_blocks(self, seq: Sequence) -> None:
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        num_full = min(seq.num_computed_tokens // bs, len(seq.block_table))
        for i in range(len(seq.block_hashes), num_full):
            tokens = tuple(seq.token_ids[i * bs:(i + 1) * bs])
            prev = seq.block_hashes[i - 1] if i else root_hash(seq)
            block_hash = chain_hash(prev, tokens)
            seq.block_hashes.append(block_hash)
            block = self.blocks[seq.block_table[i]]
            if block.block_hash is None:
                block.block_hash, block.token_ids = block_hash, tokens
                self.cached.setdefault(block_hash, block.block_id)

    # ---- release -----------------------------------------------------------------------------------
    def free_sequence(self, seq: Sequence) -> None:
        # Freed in reverse so a sequence's tail is evicted before its (more shareable) head.
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[block_id] = None
                if block.block_hash is None:
                    self.free.move_to_end(block_id, last=False)  # uncached blocks are reused first
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed_tokens = 0
