"""The subtractive cross attention (SCA) over the variables: docs/teacher.md section 5.

References: Liu et al., ICDE 2025 (TimeKD), the calibrated language model's output
stage; the published layers/Sub_CA.py (`sub_ac`) and its use in clm.py.

Module and parameter names mirror the published `sub_ac` module, so a state dict saved
from here loads into the published code with `load_state_dict`. Built in the same order
as the published module, so the same seed draws the same weights there and here. The
weights every horizon and split share are one safetensors file (save_sca, load_sca).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import __version__
from .records import read_tensors
from .store import write_tensors


class _Attention(nn.Module):
    def __init__(self, n_vars: int):
        super().__init__()
        self.W_Q = nn.Linear(n_vars, n_vars)
        self.W_K = nn.Linear(n_vars, n_vars)
        self.W_V = nn.Linear(n_vars, n_vars)
        self.sdp_attn = nn.Module()
        self.sdp_attn.scale = nn.Parameter(torch.tensor(n_vars ** -0.5), requires_grad=False)  # single head of width N
        self.to_out = nn.Sequential(nn.Linear(n_vars, n_vars))

    def forward(self, q, k, v):                                  # each (B, d, N)
        """Single-head attention over the d rows, of width N: (B, d, N)."""
        scores = self.W_Q(q) @ self.W_K(k).transpose(1, 2)       # (B, d, d)
        weights = torch.softmax(scores * self.sdp_attn.scale, dim=-1)
        return self.to_out(weights @ self.W_V(v))                # (B, d, N)


class _Layer(nn.Module):
    def __init__(self, n_vars: int, d_ff: int):
        super().__init__()
        self.self_attn = _Attention(n_vars)
        self.norm_attn = nn.LayerNorm(n_vars)
        # ff.2 is the published dropout slot (off at inference); the index keeps the key ff.3.
        self.ff = nn.Sequential(nn.Linear(n_vars, d_ff), nn.GELU(), nn.Identity(), nn.Linear(d_ff, n_vars))
        self.norm_ffn = nn.LayerNorm(n_vars)

    def forward(self, q, k, v):                                  # each (B, d, N)
        """Norm, subtracted attention, norm, residual feed-forward: (B, d, N)."""
        q, k, v = self.norm_attn(q), self.norm_attn(k), self.norm_attn(v)
        q = self.norm_ffn(q - self.self_attn(q, k, v))           # subtract, not add
        return q + self.ff(q)


class SubtractiveCrossAttention(nn.Module):
    """q = GT last-token states, k = v = HD last-token states, each (B, d, N) -> (B, d, N)."""

    def __init__(self, n_vars: int, d_model: int):
        super().__init__()
        self.layers = nn.ModuleList([_Layer(n_vars, 4 * d_model)])

    def forward(self, gt: torch.Tensor, hd: torch.Tensor) -> torch.Tensor:
        """The (B, d, N) embeddings of a batch of windows from the (B, d, N) float32 last-token states of
        the GT prompts (the query) and of the HD prompts (key and value)."""
        return self.layers[0](gt, hd, hd)


def seeded_sca(n_vars: int, d_model: int, seed: int) -> SubtractiveCrossAttention:
    """PyTorch's default initialisation drawn from `seed`, without touching the global RNG.

    Args:
        n_vars: N; d_model: d (the feed-forward width is 4 d, as published).
        seed: the torch seed (the published run's seed draws the published run's weights).
    Returns:
        The SCA in eval mode, without gradients, float32 on the CPU.
    """

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sca = SubtractiveCrossAttention(n_vars, d_model)
    return sca.eval().requires_grad_(False)


def save_sca(path: str | Path, n_vars: int, d_model: int, seed: int) -> None:
    """Write the seeded SCA's weights (seeded_sca) under the published parameter names, atomically;
    the seed, N and d go into the metadata."""
    sca = seeded_sca(n_vars, d_model, seed)
    write_tensors(path, sca.state_dict(), {"seed": str(seed), "n_vars": str(n_vars), "d_model": str(d_model),
                                           "package": f"timekd-embed {__version__}"})


def load_sca(path: str | Path) -> SubtractiveCrossAttention:
    """The SCA of save_sca's file, its shape read from the weights: eval mode, no gradients, float32 on the CPU.

    Raises:
        InputError: the file is missing or damaged (records.read_tensors).
    """
    tensors, _ = read_tensors(path)
    n_vars = tensors["layers.0.norm_attn.weight"].shape[0]
    d_model = tensors["layers.0.ff.0.weight"].shape[0] // 4
    sca = SubtractiveCrossAttention(n_vars, d_model)
    sca.load_state_dict(tensors)
    return sca.eval().requires_grad_(False)
