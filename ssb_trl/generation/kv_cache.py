"""A KV cache that writes each decoding step in place instead of copying the whole cache.

transformers' :class:`~transformers.DynamicCache` grows every layer's keys and values with ``torch.cat`` at
each step, so a step copies the whole cache: on long hinted teacher prompts (~700 tokens) that copy was
most of a CPU decoding step. :func:`reserved_cache` gives a ``DynamicCache`` whose full-attention layers
reserve room for the whole generation up front (prompt + max new tokens) and write one position per
step; the model sees the same keys and values (a view up to the current length), and rows still leave
the batch through ``batch_select_indices``.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class ReservedLayer(DynamicLayer):
    """One layer's keys/values in a buffer of ``capacity`` positions (doubled if ever outgrown).

    ``keys``/``values`` are views of the filled part, which is all the attention code reads.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self.key_buffer is None or end > self.key_buffer.shape[-2]:
            room = self.capacity if self.key_buffer is None else 2 * self.key_buffer.shape[-2]
            self._move_to_buffers(max(end, room), key_states, value_states)
        self.key_buffer[..., self.length : end, :].copy_(key_states)
        self.value_buffer[..., self.length : end, :].copy_(value_states)
        self.length = end
        self._expose()
        return self.keys, self.values

    def _move_to_buffers(self, room: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """New buffers of ``room`` positions holding what is cached so far."""
        keys = key_states.new_empty((*key_states.shape[:-2], room, key_states.shape[-1]))
        values = value_states.new_empty((*value_states.shape[:-2], room, value_states.shape[-1]))
        if self.length:
            keys[..., : self.length, :].copy_(self.keys)
            values[..., : self.length, :].copy_(self.values)
        self.key_buffer, self.value_buffer = keys, values

    def _expose(self) -> None:
        self.keys = self.key_buffer[..., : self.length, :]
        self.values = self.value_buffer[..., : self.length, :]

    def get_seq_length(self) -> int:
        return self.length

    def reset(self) -> None:
        self.key_buffer = self.value_buffer = None
        self.length = 0
        super().reset()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative number of tokens to remove, got {tokens_to_remove}")
        if tokens_to_remove and self.length:
            self.length = max(0, self.length + tokens_to_remove)
            self._expose()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep (or repeat) the rows ``indices``: copies the buffers once, no per-step cost."""
        if self.key_buffer is not None:
            self.key_buffer = self.key_buffer[indices]
            self.value_buffer = self.value_buffer[indices]
            self._expose()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx.to(self.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.key_buffer is not None:
            self.key_buffer = self.key_buffer.repeat_interleave(repeats, dim=0)
            self.value_buffer = self.value_buffer.repeat_interleave(repeats, dim=0)
            self._expose()


def reserved_cache(config: Any, capacity: int) -> DynamicCache:
    """A ``DynamicCache`` for ``config`` whose plain full-attention layers are :class:`ReservedLayer` of
    ``capacity`` positions (other layer kinds, e.g. sliding-window ones, stay as transformers makes them)."""
    cache = DynamicCache(config=config)
    cache.layers = [ReservedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
