"""The KV cache of a decoding group: one preallocated buffer per layer, written in place.

transformers' DynamicLayer concatenates each new token onto its cache, re-copying
the whole cache at every step; for a large decoding batch that copy is most of a
step (docs/results/*-benchmarks.md). These layers write each new token into a buffer
allocated once for the group's longest answer. Prompts prefilled in several
batches go in right-aligned, as if the whole group had been prefilled together
with left padding; sliding-window layers attend over their window only.

This module imports torch and transformers at the top, so `generate` loads it
only when it decodes (the CLI starts without them).
"""

from __future__ import annotations

import mmap

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from alignscope.io import InputError


def lazy_zeros(shape: tuple, like: torch.Tensor) -> torch.Tensor:
    """Zeros that cost nothing until written, on a CPU.

    Most of a decoding group's cache is left padding that is only ever read (as masked
    zeros), and torch.zeros writes every byte of it; an anonymous mapping is zero-filled
    by the kernel as its pages are first touched, so untouched padding costs nothing."""
    if like.device.type != "cpu":
        return like.new_zeros(shape)
    count = 1
    for n in shape:
        count *= n
    memory = mmap.mmap(-1, max(count * like.element_size(), 1))  # anonymous: zero-filled, mapped lazily
    return torch.frombuffer(memory, dtype=like.dtype, count=count).view(shape)


class InPlaceLayer(DynamicLayer):
    """A full-attention layer whose keys and values live in buffers of `capacity` positions."""

    def fill(self, parts: list, rows: int, width: int, capacity: int) -> None:
        """Take over the prefilled batches' caches (`parts`, in row order), right-aligned at `width`."""
        first = parts[0]
        # zeros, not empty: a masked position still meets the softmax's 0 * V
        self.kbuf = lazy_zeros((rows, first.keys.shape[1], capacity, first.keys.shape[-1]), first.keys)
        self.vbuf = lazy_zeros((rows, first.values.shape[1], capacity, first.values.shape[-1]), first.values)
        row = 0
        for part in parts:
            b, t = part.keys.shape[0], part.keys.shape[-2]  # t < width: shorter batch, or a window
            self.kbuf[row:row + b, :, width - t:width] = part.keys
            self.vbuf[row:row + b, :, width - t:width] = part.values
            row += b
        self.dtype, self.device, self.is_initialized = first.keys.dtype, first.keys.device, True
        self.length = width
        self._visible()

    def _view(self, start: int) -> tuple:
        return self.kbuf[:, :, start:self.length], self.vbuf[:, :, start:self.length]

    def _visible(self) -> None:
        self.keys, self.values = self._view(0)

    def update(self, key_states, value_states, *args, **kwargs):
        n = self.length
        self.kbuf[:, :, n:n + key_states.shape[-2]] = key_states
        self.vbuf[:, :, n:n + key_states.shape[-2]] = value_states
        self.length = n + key_states.shape[-2]
        self._visible()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def keep_rows(self, rows_kept: list[int], starts: list[int]) -> None:
        """Drop finished rows. Only each kept row's own tokens (from `starts`) are copied:
        its left padding stays untouched zeros, so dropping rows costs what they hold."""
        kbuf = lazy_zeros((len(rows_kept),) + tuple(self.kbuf.shape[1:]), self.kbuf)
        vbuf = lazy_zeros((len(rows_kept),) + tuple(self.vbuf.shape[1:]), self.vbuf)
        for new, (old, start) in enumerate(zip(rows_kept, starts)):
            kbuf[new, :, start:self.length] = self.kbuf[old, :, start:self.length]
            vbuf[new, :, start:self.length] = self.vbuf[old, :, start:self.length]
        self.kbuf, self.vbuf = kbuf, vbuf
        self._visible()


class InPlaceSlidingLayer(InPlaceLayer, DynamicSlidingWindowLayer):
    def _visible(self) -> None:
        self.cumulative_length = self.length
        self.keys, self.values = self._view(max(0, self.length - self.sliding_window + 1))

    def update(self, key_states, value_states, *args, **kwargs):
        # as DynamicSlidingWindowLayer: attend over the last window - 1 cached tokens
        # plus the new ones, keep the last window - 1
        n = self.length
        InPlaceLayer.update(self, key_states, value_states)
        return self._view(max(0, n - self.sliding_window + 1))


def decode_cache(model, prefilled: list[DynamicCache], rows: int, width: int, capacity: int) -> DynamicCache:
    """One cache for a decoding group, filled from the prefilled batches' caches."""
    cache = DynamicCache(config=model.config)
    layers = []
    for index, layer in enumerate(cache.layers):
        if type(layer) is DynamicSlidingWindowLayer:
            layer = InPlaceSlidingLayer(sliding_window=layer.sliding_window)
        elif type(layer) is DynamicLayer:
            layer = InPlaceLayer()
        else:
            raise InputError(f"{type(model).__name__}: cache layers of type {type(layer).__name__} are not "
                             "supported by the batched decoder")
        layer.fill([c.layers[index] for c in prefilled], rows, width, capacity)
        layers.append(layer)
    cache.layers = layers
    return cache
