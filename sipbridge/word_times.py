"""Token times for Whisper from its alignment heads' cross-attention, found after decoding, not during it.

transformers' `return_token_timestamps` makes generate keep every decoder layer's cross-attention at every
step and then split and restack them row by row in Python: on an H100 at 128 calls that post-processing was
most of the ASR thread's time (batches of 10-30 rows took 1-3 s, sharing the GIL with the Dia2 engine). As
OpenAI's whisper does, the tokens are decoded plainly and one more decoder forward over each row's whole
sequence gives the cross-attention of the alignment heads only; DTW then runs here.

The result is transformers' own, so times do not change with this: the same steps (the prompt and every
decoded step, the end token and the padding after it included, as generate fed them), the same per-row crop
to the row's real frames, z-scored over tokens, median-filtered over frames, averaged over the heads, the
same DTW with its tie rule and float32 costs; token i is given the time where the DTW path enters its step.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

SECONDS_PER_FRAME = 0.02  # one encoder position: 30 s of audio over 1500 of them
_FEATURES_PER_FRAME = 2  # the encoder's stride-2 convolution: two log-mel frames per position


def alignment_weights(
    model: Any, steps: torch.Tensor, encoded: torch.Tensor, heads: list[list[int]], frames: int
) -> torch.Tensor:
    """(rows, heads, steps, frames) cross-attention of the alignment heads, as float32, for the token
    sequences `steps` (what the decoder was fed, one step per column), cut to the first `frames` positions.
    One decoder forward over every step at once, in eager attention (sdpa returns no weights; the model
    runs sdpa everywhere else: the encoder's 1 500 positions are far faster that way)."""
    import torch

    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            out = model.model.decoder(
                input_ids=steps, encoder_hidden_states=encoded, output_attentions=True, use_cache=False
            )
    finally:
        model.set_attn_implementation(before)
    layers = out.cross_attentions
    picked = [layers[layer][:, head, :, :frames] for layer, head in heads]
    return torch.stack(picked, dim=1).float()


def _median_filter(x: torch.Tensor, frames: list[int], width: int) -> torch.Tensor:
    """Median over a window of `width` (odd) along the last axis of [rows, ...] values, each row's edges
    mirrored at its own real frames (`frames`), as a row cropped to them and padded by reflection would be;
    a row no longer than half the window is left as it is (mirroring needs more). Past a row's frames the
    values are meaningless."""
    import torch

    half, last = width // 2, x.shape[-1] - 1
    n = torch.tensor(frames, device=x.device).view(-1, 1) - 1  # each row's last real frame
    at = torch.arange(-half, last + 1 + half, device=x.device).view(1, -1).abs()  # mirrored at frame 0
    at = torch.where(at > n, 2 * n - at, at).clamp(0, last)  # and at the row's last frame
    index = at.view(at.shape[0], *[1] * (x.dim() - 2), at.shape[1]).expand(*x.shape[:-1], at.shape[1])
    windows = torch.gather(x, -1, index).unfold(-1, width, 1)
    median = windows.sort(dim=-1).values[..., half]
    short = (n + 1 <= half).view(-1, *[1] * (x.dim() - 1))
    return torch.where(short, x, median)


def cost_matrices(weights: torch.Tensor, frames: list[int], width: int) -> npt.NDArray[np.float64]:
    """Every row's DTW cost [rows, tokens, frames] from its [rows, heads, tokens, frames] weights, computed
    where the weights are (one transfer to the host, not a dozen small ops per row): each frame's column
    z-scored over the tokens (which tokens look at this frame more than the rest do), smoothed over frames,
    averaged over heads, negated (DTW looks for the cheapest path). Zero past each row's own frames (what
    dtw_moves expects there)."""
    import torch

    # std and mean apart, not std_mean: its mean comes out of another reduction, a last bit off theirs
    std = torch.std(weights, dim=-2, keepdim=True, correction=0)
    mean = torch.mean(weights, dim=-2, keepdim=True)
    cost = -_median_filter((weights - mean) / std, frames, width).mean(dim=1)
    ends = torch.tensor(frames, device=cost.device).view(-1, 1, 1)
    real = torch.arange(cost.shape[-1], device=cost.device) < ends
    cost = torch.where(real, cost, torch.zeros((), dtype=cost.dtype, device=cost.device))
    return cost.double().cpu().numpy()


def dtw_moves(costs: list[npt.NDArray[np.float64]] | npt.NDArray[np.float64]) -> npt.NDArray[np.int8]:
    """The move into every cell on the cheapest accumulated cost, for matrices of as many tokens (not frames):
    a list of [tokens, frames] ones, or one [rows, tokens, frames] array already zero past each row's frames.

    A cell (i, j) depends only on (i-1, j-1), (i-1, j) and (i, j-1): the cells of one anti-diagonal are
    independent, so they are computed at once, for every matrix: tokens + frames numpy steps in all instead
    of tokens x frames Python ones per row. Cells past a shorter matrix's last frame get cost 0 and are
    never read by its own path. Moves: 0 diagonal, 1 from the token above (same frame), 2 from the frame
    before (same token). Ties go as in OpenAI's and transformers' DTW: the diagonal only when strictly
    cheapest, then the token above only when strictly cheapest, else the frame before. Costs are float32
    (their sums rounded at each cell), like theirs."""
    if isinstance(costs, np.ndarray):
        matrix = costs
    else:
        matrix = np.zeros((len(costs), costs[0].shape[0], max(c.shape[1] for c in costs)), dtype=np.float64)
        for r, c in enumerate(costs):
            matrix[r, :, : c.shape[1]] = c
    rows, tokens, frames = matrix.shape
    width = frames + 1
    cost = np.full((rows, (tokens + 1) * width), np.inf, dtype=np.float32)  # the (tokens+1, frames+1) grid
    cost[:, 0] = 0
    move = np.full((rows, (tokens + 1) * width), -1, dtype=np.int8)
    flat = matrix.reshape(rows, -1)
    cells, before, neighbours, bounds = _diagonals(tokens, frames)
    for a, b in itertools.pairwise(bounds):  # one anti-diagonal per numpy step
        cand = cost[:, neighbours[:, a:b]]  # [rows, 3, n]: (i-1, j-1), (i-1, j), (i, j-1)
        c0, c1, c2 = cand[:, 0], cand[:, 1], cand[:, 2]
        # strictly cheapest wins (diagonal, then the token above), else the frame before
        diag, up = c0 < np.minimum(c1, c2), c1 < np.minimum(c0, c2)
        # a float64 sum, rounded to float32 on the store
        cost[:, cells[a:b]] = flat[:, before[a:b]] + np.where(diag, c0, np.where(up, c1, c2))
        move[:, cells[a:b]] = np.where(diag, 0, np.where(up, 1, 2))
    move = move.reshape(rows, tokens + 1, width)
    move[:, 0, :] = 2  # on the edges the path can only run along them, back to the corner
    move[:, :, 0] = 1
    return move


def _diagonals(tokens: int, frames: int) -> tuple[npt.NDArray[np.int64], ...]:
    """The grid's cells (i >= 1, j >= 1) in anti-diagonal order, as flat indices of the (tokens+1,
    frames+1) grid; each one's cost-matrix index (i-1, j-1); its three neighbours' flat indices [3, cells];
    and where each anti-diagonal starts and ends in that order."""
    width = frames + 1
    i, j = np.meshgrid(np.arange(1, tokens + 1), np.arange(1, frames + 1), indexing="ij")
    order = np.argsort((i + j).ravel(), kind="stable")
    i, j = i.ravel()[order], j.ravel()[order]
    cells = i * width + j
    neighbours = np.stack([cells - width - 1, cells - width, cells - 1])
    bounds = np.concatenate([[0], np.cumsum(np.bincount(i + j)[2:])])
    return cells, (i - 1) * frames + (j - 1), neighbours, bounds


def entry_frames(move: npt.NDArray[np.int8], tokens: int, frames: int) -> npt.NDArray[np.int64]:
    """The frame where the cheapest path from (tokens, frames) back to (0, 0) first reaches each token."""
    first = np.zeros(tokens, dtype=np.int64)
    i, j = tokens, frames
    while i > 0:  # row 0 is reached only at (0, 0): cells (1, j) never look up at the infinite row 0
        first[i - 1] = j - 1  # walked backwards: the last write for a token is where the path enters it
        step = move[i, j]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        else:
            j -= 1
    return first


def token_times(
    weights: torch.Tensor, frames: list[int], prompt: int, width: int
) -> list[npt.NDArray[np.float32]]:
    """Per row, the time (s) of each decoded token: (rows, heads, steps, frames) alignment weights of the
    steps (the prompt first), each row's real encoder frames, the prompt's length, the median filter width.
    Decoded token k has the time of step prompt + k; the last decoded token, never fed back, has the time of
    the one before it. Float32, as transformers gives them."""
    decoded = weights.shape[2] - prompt + 1
    if decoded <= 1:  # nothing fed back after the prompt: no attention to align
        return [np.zeros(decoded, dtype=np.float32) for _ in frames]
    costs = cost_matrices(weights[:, :, prompt:, : max(frames)], frames, width)
    move = dtw_moves(costs)
    times = []
    for r, n in enumerate(frames):
        first = entry_frames(move[r], costs.shape[1], n)
        row = np.empty(decoded, dtype=np.float32)
        row[:-1] = first * SECONDS_PER_FRAME
        row[-1] = row[-2]
        times.append(row)
    return times


def encoder_frames(feature_frames: list[int]) -> list[int]:
    """Each row's real encoder positions from its real log-mel frames (the feature extractor's mask)."""
    return [n // _FEATURES_PER_FRAME for n in feature_frames]
