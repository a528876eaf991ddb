"""Streaming Mimi decoder: one frame of codes in, one frame (1920 samples at 24 kHz) of audio out.

transformers' ``MimiModel.decode`` is one-shot: it can carry the decoder transformer's KV cache between
calls, but none of the convolution state, so decoding frame by frame pads every chunk with zeros on the left
and drops the transposed-conv overlap on the right (boundary clicks, ~11-14 dB SNR against a full decode).

:class:`StreamingMimiDecoder` runs the same modules (it holds a reference to an already-loaded
``MimiModel`` and reuses its weights; nothing is copied) with all streaming state made explicit in a
:class:`MimiStreamState` dataclass:

* causal ``MimiConv1d``: the last ``padding_total`` input samples of the previous chunk (what the one-shot
  decode sees as left context; zeros at the start of a stream, which is exactly the ``constant`` padding the
  one-shot decode applies);
* ``MimiConvTranspose1d`` (incl. the 12.5 -> 25 Hz ``upsample``): the ``kernel - stride`` overlap tail, which
  the next chunk's output overlap-adds onto; the one-shot decode trims that tail at the very end of the
  sequence, so holding it back is exactly equivalent;
* decoder transformer: a fixed-size rolling KV cache of ``sliding_window`` entries per layer plus a per-row
  position counter (RoPE position and cache validity mask both derive from it).

Streamed output equals ``MimiModel.decode`` of the whole code sequence (since the row's last reset) up to
float rounding, from the very first frame: with ``pad_mode`` ``constant`` (kyutai/mimi) or ``replicate`` the
start of a stream has no unavoidable difference. ``reflect`` padding needs future samples and is rejected.

All state tensors are preallocated with static shapes for a fixed batch size, updated in place, and rows can
be reset independently (:meth:`StreamingMimiDecoder.reset`), so a batch of independent calls can share one
decoder and the step is capturable in a CUDA graph (for a fixed frames-per-call).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import MimiModel
from transformers.models.mimi.modeling_mimi import (
    MimiConv1d,
    MimiConvTranspose1d,
    MimiEuclideanCodebook,
    MimiResnetBlock,
    MimiTransformerModel,
)

logger = logging.getLogger(__name__)

__all__ = ["MimiStreamState", "StreamingMimiDecoder"]


@dataclass
class MimiStreamState:
    """Everything a stream carries between frames, for a fixed batch of ``B`` independent rows.

    Attributes:
        offset: ``[B]`` int64, transformer steps decoded since the row's last reset (its next RoPE position).
        fresh: ``[B]`` bool, the row has not decoded a frame since its reset (used by ``replicate`` padding).
        conv_history: per causal conv with left context, ``[B, C_in, padding_total]``: its last input samples.
        convtr_tail: per transposed conv, ``[B, C_out, kernel - stride]``: the overlap not yet emitted
            (without bias; the bias is added once when the sample is emitted).
        keys, values: per transformer layer, ``[B, H_kv, window, head_dim]``, RoPE already applied to keys.
            Slot ``i`` of row ``b`` holds position ``offset[b] - window + i``; negative positions are empty.
    """

    offset: torch.Tensor
    fresh: torch.Tensor
    conv_history: list[torch.Tensor] = field(default_factory=list)
    convtr_tail: list[torch.Tensor] = field(default_factory=list)
    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return int(self.offset.shape[0])

    def tensors(self) -> list[torch.Tensor]:
        """All state tensors (row-major in dim 0), e.g. for zeroing or moving them together."""
        return [
            self.offset,
            self.fresh,
            *self.conv_history,
            *self.convtr_tail,
            *self.keys,
            *self.values,
        ]


# --- streaming wrappers around the transformers SEANet modules (plain objects: no weights registered) ---


class _StreamConv:
    """Causal stride-1 ``MimiConv1d`` with its left context carried in ``state.conv_history[slot]``."""

    def __init__(self, module: MimiConv1d, slot: int | None) -> None:
        conv = module.conv
        if not module.causal:
            # A centred (non-causal) conv needs right context, i.e. look-ahead across frames.
            raise ValueError("StreamingMimiDecoder needs use_causal_conv=True")
        if conv.stride[0] != 1:
            # The decoder has no strided convs; a strided one would also need the `extra_padding` logic.
            raise ValueError(f"streaming supports stride-1 decoder convs only, got stride {conv.stride[0]}")
        if module.pad_mode not in ("constant", "replicate"):
            # reflect padding of the stream start needs samples that have not arrived yet
            raise ValueError(f"pad_mode={module.pad_mode!r} cannot be streamed exactly")
        self.module = module
        self.conv = conv
        self.context = int(module.padding_total)  # (kernel - 1) * dilation for stride 1
        self.replicate = module.pad_mode == "replicate"
        self.slot = slot

    def __call__(self, x: torch.Tensor, state: MimiStreamState) -> torch.Tensor:
        if self.slot is None:
            return self.conv(x)
        history = state.conv_history[self.slot]
        if self.replicate:
            # One-shot decode pads the stream start with copies of its first sample instead of zeros.
            first = x[..., :1].expand_as(history)
            history = torch.where(state.fresh[:, None, None], first, history)
        full = torch.cat([history, x], dim=-1)
        state.conv_history[self.slot].copy_(full[..., -self.context :])
        return self.conv(full)


class _StreamConvTranspose:
    """Causal ``MimiConvTranspose1d`` (right trim = kernel - stride) with the overlap tail carried."""

    def __init__(self, module: MimiConvTranspose1d, slot: int) -> None:
        conv = module.conv
        if not module.causal or module.padding_left != 0:
            # Non-causal / trim_right_ratio < 1 trims the start of the whole sequence, not of each chunk.
            raise ValueError("StreamingMimiDecoder needs causal transposed convs with trim_right_ratio=1.0")
        self.conv = conv
        self.stride = int(conv.stride[0])
        self.overlap = int(conv.kernel_size[0]) - self.stride
        if int(module.padding_right) != self.overlap:
            raise ValueError("unexpected MimiConvTranspose1d padding")
        self.slot = slot

    def _full(self, x: torch.Tensor) -> torch.Tensor:
        """Transposed conv of ``x`` without bias: ``[B, C_out, (T - 1) * stride + kernel]``."""
        conv = self.conv
        b, c_in, t = x.shape
        k, s, g = int(conv.kernel_size[0]), self.stride, int(conv.groups)
        # On CPU, torch sends small inputs (<= 20480 elements per batch row) of a transposed conv to its naive
        # `slow_conv_transpose2d` kernel: 33 ms for the first full-size Mimi layer (1024 ch, 2 steps) against
        # 2 ms as one matmul + overlap-add. The matmul form is exact up to summation order.
        if x.device.type != "cpu" or k % s != 0 or c_in * t > 20480:
            return F.conv_transpose1d(x, conv.weight, None, stride=conv.stride, groups=g)
        m = k // s
        c_out = int(conv.out_channels)
        weight = conv.weight.reshape(g, c_in // g, (c_out // g) * k)  # a view of [C_in, C_out / g, k]
        z = torch.matmul(x.reshape(b, g, c_in // g, t).transpose(2, 3), weight)  # [B, g, T, C_out/g * k]
        z = z.reshape(b, g, t, c_out // g, m, s).permute(0, 1, 3, 2, 4, 5).reshape(b, c_out, t, m, s)
        # Input step j writes kernel block i to output block j + i.
        out = x.new_zeros(b, c_out, t + m - 1, s)
        for i in range(m):
            out[:, :, i : i + t] += z[:, :, :, i]
        return out.reshape(b, c_out, (t + m - 1) * s)

    def __call__(self, x: torch.Tensor, state: MimiStreamState) -> torch.Tensor:
        conv = self.conv
        # Bias is left out here and added only to emitted samples, so the carried tail never holds it twice.
        y = self._full(x)
        n_out = x.shape[-1] * self.stride
        tail = state.convtr_tail[self.slot]
        head = y[..., : self.overlap] + tail
        body = torch.cat([head, y[..., self.overlap : n_out]], dim=-1)
        tail.copy_(y[..., n_out:])
        if conv.bias is not None:
            body = body + conv.bias[:, None]
        return body


class _StreamResBlock:
    def __init__(self, block: list[object], shortcut: object) -> None:
        self.block = block
        self.shortcut = shortcut

    def __call__(self, x: torch.Tensor, state: MimiStreamState) -> torch.Tensor:
        residual = x
        for op in self.block:
            x = _apply(op, x, state)
        return _apply(self.shortcut, residual, state) + x


def _apply(op: object, x: torch.Tensor, state: MimiStreamState) -> torch.Tensor:
    if isinstance(op, (_StreamConv, _StreamConvTranspose, _StreamResBlock)):
        return op(x, state)
    assert isinstance(op, nn.Module)
    return op(x)  # pointwise activation / identity: no state


# Pointwise modules that need no streaming state.
_STATELESS = (nn.ELU, nn.Identity, nn.GELU, nn.ReLU, nn.SiLU, nn.LeakyReLU, nn.Tanh)


@dataclass
class _StateSpec:
    """Shapes (without the batch dim) of the state tensors, collected while wrapping the modules."""

    conv_history: list[tuple[int, int]] = field(default_factory=list)
    convtr_tail: list[tuple[int, int]] = field(default_factory=list)


class StreamingMimiDecoder:
    """Frame-by-frame Mimi decoder over the weights of a loaded transformers ``MimiModel``.

    Args:
        model: the ``MimiModel`` (any device; float32 or bfloat16). Only referenced, never copied, so moving
            or casting the model afterwards needs a new decoder (the state follows the model's device/dtype).
        batch_size: number of independent rows (calls) decoded together; fixed, so state shapes are static.

    Usage::

        dec = StreamingMimiDecoder(model, batch_size=3)
        audio = dec.decode_frame(codes)          # codes [3, K, 1] -> audio [3, 1920]
        dec.reset(torch.tensor([False, True, False]))   # row 1 starts a new stream
    """

    def __init__(self, model: MimiModel, batch_size: int = 1) -> None:
        if model.decoder is None:
            raise ValueError("this MimiModel was built without a decoder")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        config = model.config
        # transformers >= 5.2x nests the decoder side in a MimiDecoderModel (upsample, decoder_transformer,
        # decoder_seanet); earlier versions (the GPU image's 5.17, 4.57) keep those parts on MimiModel
        # itself, with ``model.decoder`` being the SEANet decoder.
        decoder: Any = model.decoder
        if not hasattr(decoder, "decoder_transformer"):
            decoder = SimpleNamespace(
                upsample=getattr(model, "upsample", None),
                decoder_transformer=model.decoder_transformer,
                decoder_seanet=model.decoder,
            )
        param = next(model.decoder.parameters())
        self.device: torch.device = param.device
        self.dtype: torch.dtype = param.dtype
        self.batch_size = int(batch_size)
        self.frame_size = int(config.frame_size)
        self.codebook_size = int(config.codebook_size)

        self._refresh_codebooks()
        spec = _StateSpec()
        self._upsample: _StreamConvTranspose | None = None
        self.steps_per_frame = 1
        if decoder.upsample is not None:
            self._upsample = self._wrap_convtr(decoder.upsample, spec)
            self.steps_per_frame = self._upsample.stride
        self._seanet: list[object] = [self._wrap(layer, spec) for layer in decoder.decoder_seanet.layers]
        self._spec = spec

        transformer: MimiTransformerModel = decoder.decoder_transformer
        self._transformer = transformer
        tconf = transformer.config
        if getattr(transformer.rotary_emb, "rope_type", "default") != "default":
            logger.warning(
                "Mimi rope_type %r: streaming uses the static inv_freq", transformer.rotary_emb.rope_type
            )
        # No sliding window means full attention: the cache would have to grow without bound.
        if tconf.sliding_window is None:
            raise ValueError("streaming needs a finite decoder sliding_window (fixed-size KV cache)")
        self.window = int(tconf.sliding_window)
        attn = transformer.layers[0].self_attn
        self.num_heads = int(attn.num_heads)
        self.num_kv_heads = int(attn.num_key_value_heads)
        self.head_dim = int(attn.head_dim)

        samples_per_step = 1
        for op in self._seanet:
            if isinstance(op, _StreamConvTranspose):
                samples_per_step *= op.stride
        if samples_per_step * self.steps_per_frame != self.frame_size:
            raise ValueError(
                f"decoder upsamples {samples_per_step * self.steps_per_frame}x, "
                f"but frame_size is {self.frame_size}"
            )
        self.state = self.new_state()
        logger.debug(
            "StreamingMimiDecoder: batch %d, %d conv states, %d convtr tails, %d layers x window %d",
            batch_size,
            len(spec.conv_history),
            len(spec.convtr_tail),
            len(transformer.layers),
            self.window,
        )

    # --- construction helpers ---

    def _refresh_codebooks(self) -> None:
        """Make the codebooks' lazily cached embedding tables match their buffers' device and dtype.

        ``MimiEuclideanCodebook`` caches ``embed_sum / cluster_usage`` in a plain attribute on first use,
        which ``model.to(...)`` does not move or cast: a model decoded once in float32 and then cast to
        bfloat16 (or moved to CUDA) fails in ``quantizer.decode``. Recomputing here also keeps that division
        out of the first streamed frame (and out of a CUDA graph capture).
        """
        for module in self.model.quantizer.modules():
            if isinstance(module, MimiEuclideanCodebook):
                cached = module._embed
                ref = module.embed_sum
                if cached is not None and (cached.dtype != ref.dtype or cached.device != ref.device):
                    module._embed = None
                _ = module.embed

    def _wrap_conv(self, module: MimiConv1d, spec: _StateSpec) -> _StreamConv:
        context = int(module.padding_total)
        slot = None
        if context > 0:
            slot = len(spec.conv_history)
            spec.conv_history.append((int(module.conv.in_channels), context))
        return _StreamConv(module, slot)

    def _wrap_convtr(self, module: MimiConvTranspose1d, spec: _StateSpec) -> _StreamConvTranspose:
        slot = len(spec.convtr_tail)
        op = _StreamConvTranspose(module, slot)
        spec.convtr_tail.append((int(module.conv.out_channels), op.overlap))
        return op

    def _wrap(self, layer: nn.Module, spec: _StateSpec) -> object:
        if isinstance(layer, MimiConv1d):
            return self._wrap_conv(layer, spec)
        if isinstance(layer, MimiConvTranspose1d):
            return self._wrap_convtr(layer, spec)
        if isinstance(layer, MimiResnetBlock):
            return _StreamResBlock(
                [self._wrap(sub, spec) for sub in layer.block], self._wrap(layer.shortcut, spec)
            )
        if isinstance(layer, _STATELESS):
            return layer
        raise TypeError(f"don't know how to stream {type(layer).__name__}")

    # --- state ---

    def new_state(self, batch_size: int | None = None) -> MimiStreamState:
        """Fresh (all rows reset) state for ``batch_size`` rows on the model's device and dtype."""
        b = self.batch_size if batch_size is None else int(batch_size)
        kw = {"device": self.device, "dtype": self.dtype}
        return MimiStreamState(
            offset=torch.zeros(b, dtype=torch.int64, device=self.device),
            fresh=torch.ones(b, dtype=torch.bool, device=self.device),
            conv_history=[torch.zeros(b, c, n, **kw) for c, n in self._spec.conv_history],
            convtr_tail=[torch.zeros(b, c, n, **kw) for c, n in self._spec.convtr_tail],
            keys=[
                torch.zeros(b, self.num_kv_heads, self.window, self.head_dim, **kw)
                for _ in self._transformer.layers
            ],
            values=[
                torch.zeros(b, self.num_kv_heads, self.window, self.head_dim, **kw)
                for _ in self._transformer.layers
            ],
        )

    @torch.no_grad()
    def reset(self, mask: torch.Tensor | Sequence[bool] | None = None) -> None:
        """Start a new stream on the rows where ``mask`` is true (all rows if ``mask`` is None).

        In place, so tensors captured in a CUDA graph stay valid. Other rows keep their state untouched.
        """
        state = self.state
        if mask is None:
            mask_t = torch.ones(state.batch_size, dtype=torch.bool, device=self.device)
        else:
            mask_t = torch.as_tensor(mask, dtype=torch.bool, device=self.device)
        if mask_t.shape != (state.batch_size,):
            raise ValueError(f"reset mask must have shape [{state.batch_size}], got {tuple(mask_t.shape)}")
        for t in state.tensors():
            if t is state.fresh:
                continue
            # Zeroed (not just masked) so stale values can never leak, e.g. as NaN * 0 in attention.
            t.masked_fill_(mask_t.view(-1, *([1] * (t.dim() - 1))), 0)
        state.fresh.logical_or_(mask_t)

    # --- decoding ---

    @torch.no_grad()
    def decode_frame(self, codes: torch.Tensor) -> torch.Tensor:
        """Decode ``codes`` ``[B, K, n]`` (n >= 1 frames, K <= num_quantizers) to audio ``[B, n * 1920]``.

        The output continues each row's stream; it is what ``MimiModel.decode`` of all of the row's codes
        since its last reset returns for these frames (up to float rounding). Not clamped to [-1, 1].

        Codes outside ``0 .. codebook_size - 1`` (Dia2's BOS/PAD 2048/2049, the -2 "ungenerated" marker)
        are decoded as code 0: an out-of-range lookup here would be a device-side assert that takes the
        whole CUDA context (every call) down, and this runs inside captured graphs, where it cannot raise.
        The engine never sends one (frame._write_code replaces and reports them); this is the last guard.
        """
        if codes.dim() != 3 or codes.shape[0] != self.batch_size:
            raise ValueError(f"codes must be [{self.batch_size}, K, n], got {tuple(codes.shape)}")
        state = self.state
        codes = codes.to(self.device)
        codes = torch.where((codes >= 0) & (codes < self.codebook_size), codes, torch.zeros_like(codes))
        latents = self.model.quantizer.decode(codes)  # [B, C, n], stateless per frame
        x = latents.to(self.dtype)
        if self._upsample is not None:
            x = self._upsample(x, state)  # [B, C, n * steps_per_frame]
        x = self._transformer_step(x.transpose(1, 2), state).transpose(1, 2)
        for op in self._seanet:
            x = _apply(op, x, state)
        state.fresh.zero_()
        return x[:, 0] if x.shape[1] == 1 else x.reshape(x.shape[0], -1)

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        rotary = self._transformer.rotary_emb
        # Same float32 computation as MimiRotaryEmbedding, then cast, so positions round identically.
        freqs = positions[..., None].float() * rotary.inv_freq.to(
            device=positions.device, dtype=torch.float32
        )
        emb = torch.cat([freqs, freqs], dim=-1)
        scale = rotary.attention_scaling
        return (emb.cos() * scale).to(dtype), (emb.sin() * scale).to(dtype)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def _transformer_step(self, x: torch.Tensor, state: MimiStreamState) -> torch.Tensor:
        """Decoder transformer on ``x`` ``[B, T, C]`` with the rolling KV cache; updates ``state``."""
        b, t, _ = x.shape
        w = self.window
        steps = torch.arange(t, device=x.device)
        q_pos = state.offset[:, None] + steps  # [B, T]
        k_pos = state.offset[:, None] - w + torch.arange(w + t, device=x.device)  # [B, W + T]
        diff = q_pos[:, :, None] - k_pos[:, None, :]  # [B, T, W + T]
        # Causal, inside the sliding window (q - k < W, as transformers' mask), and not before the reset.
        allowed = (diff >= 0) & (diff < w) & (k_pos[:, None, :] >= 0)
        attn_mask = allowed[:, None]  # broadcast over heads
        cos, sin = self._rope(q_pos, x.dtype)
        cos, sin = cos[:, None], sin[:, None]  # [B, 1, T, D]

        for i, layer in enumerate(self._transformer.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
            q = self._rotate(q, cos, sin)
            k = self._rotate(k, cos, sin)
            keys = torch.cat([state.keys[i], k], dim=2)
            values = torch.cat([state.values[i], v], dim=2)
            # Roll the window: keep the newest W entries (static shape, in place).
            state.keys[i].copy_(keys[:, :, -w:])
            state.values[i].copy_(values[:, :, -w:])
            if self.num_kv_heads != self.num_heads:
                groups = self.num_heads // self.num_kv_heads
                keys = keys.repeat_interleave(groups, dim=1)
                values = values.repeat_interleave(groups, dim=1)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask, scale=attn.scaling)
            out = attn.o_proj(out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))
            x = x + layer.self_attn_layer_scale(out)
            x = x + layer.mlp_layer_scale(layer.mlp(layer.post_attention_layernorm(x)))
        state.offset.add_(t)
        return x
