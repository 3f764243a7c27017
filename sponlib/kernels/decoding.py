"""Batch-1 greedy decoding with a static KV cache, the one-token step captured whole: the path
on which dense and sparse models are timed end to end (benchmarks/kernels_h200.py).

    decoder = StaticDecoder(model, max_len=512, mode="compile")
    tokens = decoder.generate(prompt_ids, 32)          # (1, 32) greedy continuation
    seconds = decoder.seconds_per_token(prompt_ids, 128)

Modes:
    "eager"    the plain forward pass, any device (the reference for the other two)
    "compile"  torch.compile(mode="reduce-overhead", fullgraph=True): inductor fuses the small
               ops and CUDA-graphs the step. The strongest dense path, and the sparse model's
               custom ops go through it as they are.
    "graph"    one CUDA graph of the eager step, captured by hand: no compile time, but every
               small op stays its own kernel.

Eager decoding on a GPU is bound by the CPU launching one small kernel after another, which
would hide any kernel's gain: time only the captured modes.
"""

from __future__ import annotations

import inspect

import torch
from transformers import StaticCache

from ..errors import InvalidArgumentError

MODES = ("eager", "compile", "graph")


class StaticDecoder:
    """Greedy decoding of one sequence at a time with a static KV cache of `max_len` tokens."""

    def __init__(self, model, max_len: int, mode: str = "compile"):
        if mode not in MODES:
            raise InvalidArgumentError(f"unknown decoding mode {mode!r}; choose from {', '.join(MODES)}")
        self.device = next(model.parameters()).device
        if mode != "eager" and self.device.type != "cuda":
            raise InvalidArgumentError(
                f"mode {mode!r} captures CUDA graphs; the model is on {self.device} (use mode='eager')"
            )
        self.model, self.max_len, self.mode = model, int(max_len), mode
        self.cache = StaticCache(config=model.config, max_cache_len=self.max_len)
        # newer transformers name the argument `cache`, older ones `past_key_values`
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self._graph = None
        self._compiled = (
            torch.compile(self._forward, mode="reduce-overhead", fullgraph=True) if mode == "compile" else None
        )

    def _forward(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """token (1, T) at positions (T,) -> greedy next token (1, 1)."""
        logits = self.model(
            input_ids=token,
            cache_position=position,
            position_ids=position[None],
            use_cache=True,
            **{self._cache_arg: self.cache},
        ).logits  # (1, T, V)
        return logits[:, -1].argmax(-1, keepdim=True)

    def _capture(self, token: torch.Tensor, position: torch.Tensor) -> None:
        """Record one step as a CUDA graph, after warm-up runs on a side stream (which write the
        same cache slot the first real step writes again)."""
        self._token, self._position = token.clone(), position.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._forward(self._token, self._position)
        torch.cuda.current_stream().wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._next = self._forward(self._token, self._position)

    @torch.inference_mode()
    def step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """One decoding step: token (1, 1) at position (1,) -> next token (1, 1)."""
        if self.mode == "eager":
            return self._forward(token, position)
        if self.mode == "compile":
            return self._compiled(token, position).clone()  # the graph's output is overwritten next step
        if self._graph is None:
            self._capture(token, position)
        self._token.copy_(token)
        self._position.copy_(position)
        self._graph.replay()
        return self._next.clone()

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Empty the cache and run the prompt ids (1, T) eagerly -> first new token (1, 1)."""
        if ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] < 1:
            raise InvalidArgumentError(f"prompt must be (1, T) token ids with T >= 1; got {tuple(ids.shape)}")
        if ids.shape[1] >= self.max_len:
            raise InvalidArgumentError(f"prompt of {ids.shape[1]} tokens does not fit a cache of {self.max_len}")
        self.cache.reset()
        return self._forward(ids.to(self.device), torch.arange(ids.shape[1], device=self.device))

    def _check_room(self, ids: torch.Tensor, new_tokens: int) -> None:
        if new_tokens < 1:
            raise InvalidArgumentError(f"asked for {new_tokens} new tokens; ask for at least 1")
        if ids.shape[-1] + new_tokens > self.max_len:
            raise InvalidArgumentError(
                f"{ids.shape[-1]} prompt + {new_tokens} new tokens exceed the cache of "
                f"{self.max_len}; build the decoder with a larger max_len"
            )

    @torch.inference_mode()
    def generate(self, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """Greedy continuation of prompt ids (1, T) -> (1, new_tokens)."""
        self._check_room(ids, new_tokens)
        token = self.prefill(ids)  # (1, 1)
        position = torch.tensor([ids.shape[1]], device=self.device)  # (1,)
        tokens = [token]
        for _ in range(new_tokens - 1):
            token = self.step(token, position)
            position += 1
            tokens.append(token)
        return torch.cat(tokens, dim=1)

    @torch.inference_mode()
    def seconds_per_token(self, ids: torch.Tensor, tokens: int, warmup: int = 8) -> float:
        """Device time per step: after `warmup` steps (compilation, capture), `tokens` steps run
        back to back between two CUDA events, over their count."""
        if self.device.type != "cuda":
            raise InvalidArgumentError("timing uses CUDA events; the model is not on a GPU")
        self._check_room(ids, warmup + tokens + 1)
        token = self.prefill(ids)
        position = torch.tensor([ids.shape[1]], device=self.device)
        for _ in range(warmup):
            token = self.step(token, position)
            position += 1
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(tokens):
            token = self.step(token, position)
            position += 1
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0 / tokens
