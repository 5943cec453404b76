"""Networks of the Diffusion Policy (Chi et al., RSS 2023): the 1D temporal conditional U-Net that
predicts the noise of an action chunk, and the observation encoder that conditions it.

ConditionalUnet1D follows Chi et al.'s `ConditionalUnet1D` (diffusion_policy/model/diffusion/
conditional_unet1d.py): residual blocks of two Conv1d-GroupNorm-Mish layers, each block conditioned
on [diffusion-step embedding, observation features] through Mish -> Linear, as a FiLM scale and
bias (or a bias only), down/up-sampling by 2 between levels and skip connections. Same layers and
parameter shapes, except the upsampling transposed convolutions, stored as the matmul they compute
(`Upsample1d.from_conv_transpose` maps one to the other).

Differences in how it is computed, not in what, for inference speed (select_action at batch 1):
Linear(Mish([s, o])) = W_s Mish(s) + W_o Mish(o) + b, so `condition_steps()` encodes the observation
once and all the DDIM steps' embeddings in one batch, and a denoising step runs only the
convolutions; and small-batch CPU convolutions are explicit im2col matmuls (see `Conv1d`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Film = tuple[Tensor | None, Tensor]  # per-channel (scale or None, bias), each (B, C, 1)

IMAGE_CHANNELS = (32, 64, 64)  # conv widths of the image encoder (3x3, strides 2, 2, 1)
IMAGE_STRIDES = (2, 2, 1)
NUM_KEYPOINTS = 32  # spatial-softmax keypoints per camera (robomimic's and Chi et al.'s num_kp)


# ---- the noise-prediction network -----------------------------------------------------------------
# Why the U-Net uses `Conv1d` below and not `nn.Conv1d`: PyTorch's CPU convolution uses oneDNN only
# for a batch > 1 when the kernel is 1-D; at batch 1 it runs `slow_conv2d`, a gemm with the im2col
# matrix laid out (C_in*k, T), which MKL executes 2-4x slower than the same product with the matrix
# laid out (T, C_in*k) (measured on a 2-core AMD EPYC, one thread: 455 vs 123 us for 256 -> 256
# channels, k = 5, T = 4; a 1x1 conv of 512 -> 128 channels: 93 vs 21 us). ConvTranspose1d at batch 1
# is slower still. So on CPU the convolutions are explicit im2col matmuls, which also beat oneDNN at
# batch 32-256 there (a default-size chunk at batch 64: 0.57 vs 0.85 s); below _IM2COL_MIN_WEIGHT
# weights (k > 1) the extra ops cost more than the gemm saves and torch's conv runs. On a GPU: cuDNN.
# The upsampling transposed convolution is a matmul module of its own (Upsample1d). Weights keep
# nn.Conv1d's layout.
_IM2COL_MIN_WEIGHT = 32768


class Conv1d(nn.Conv1d):
    """nn.Conv1d (same parameters, zero padding), on CPU computed as one matmul (see above):
    (B, C_in, T) -> (B, C_out, T')."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__(c_in, c_out, kernel_size, stride, padding)
        self.pointwise = kernel_size == 1 and stride == 1 and padding == 0
        self.im2col = not self.pointwise and self.weight.numel() >= _IM2COL_MIN_WEIGHT

    def forward(self, x: Tensor) -> Tensor:
        if not x.is_cpu or not (self.pointwise or self.im2col):
            return F.conv1d(x, self.weight, self.bias, self.stride, self.padding)
        # Sizes come from the weight's shape (Python ints, constants in a trace), never from x's: a traced
        # x.shape becomes size/NumToTensor/Int nodes the TorchScript interpreter runs on every call
        # (~2,300 of a default chunk's ~5,800 nodes before, ~11% of its time).
        w, bias = self.weight, self.bias
        c_out, c_in, k = w.shape
        if self.pointwise:  # (B, T, C_in) @ (C_in, C_out)
            return F.linear(x.transpose(1, 2), w.view(c_out, c_in), bias).transpose(1, 2)
        (stride,), (pad,) = self.stride, self.padding
        cols = (F.pad(x, (pad, pad)) if pad else x).unfold(2, k, stride)  # (B, C, T', k)
        w = w.view(c_out, c_in * k)
        if len(x) == 1:  # W @ rows^T: (C_out, T') comes out contiguous, as the GroupNorm after it wants
            rows = cols[0].transpose(0, 1).reshape(-1, c_in * k)  # im2col rows (T', C * k)
            return torch.addmm(bias.unsqueeze(1), w, rows.t()).unsqueeze(0)
        rows = cols.transpose(1, 2).flatten(2)  # (B, T', C * k)
        return F.linear(rows, w, bias).transpose(1, 2)


class Upsample1d(nn.Module):
    """Doubles the length: (B, C_in, T) -> (B, C_out, 2T); the ConvTranspose1d(C_in, C_out, 4, stride=2,
    padding=1) of Chi et al., parametrized as the matmul it computes:

        out[2m] = W_even [x[m-1], x[m]],   out[2m+1] = W_odd [x[m], x[m+1]]

    (W_even holds the transposed conv's taps 3 and 1, W_odd taps 2 and 0), so one gemm on the
    2-step windows of x computes both, on any device and batch size."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        bound = 1 / math.sqrt(2 * c_in)  # nn.Linear's default init for 2 * c_in inputs
        # rows: (output parity, out channel), columns: (in channel, window position)
        self.weight = nn.Parameter(torch.empty(2 * c_out, c_in * 2).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(c_out, 1).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        c_out = len(self.bias)  # sizes from the parameters, not from x (see Conv1d.forward)
        cols = F.pad(x, (1, 1)).unfold(2, 2, 1).transpose(1, 2).flatten(2)  # (B, T+1, 2C), row i: [x[i-1], x[i]]
        y = F.linear(cols, self.weight).unflatten(-1, (2, c_out))  # (B, T+1, parity, C_out)
        out = torch.stack([y[:, :-1, 0], y[:, 1:, 1]], dim=2).flatten(1, 2)  # (B, 2T, C_out): even, odd, even, ...
        return torch.add(out.transpose(1, 2), self.bias)

    @classmethod
    def from_conv_transpose(cls, conv: nn.ConvTranspose1d) -> Upsample1d:
        """The same map as `conv` (k=4, stride=2, padding=1), e.g. to load Chi et al.'s weights."""
        c_in, c_out, k = conv.weight.shape
        if (k, conv.stride[0], conv.padding[0]) != (4, 2, 1):
            raise ValueError(f"only ConvTranspose1d(k=4, stride=2, padding=1) maps to Upsample1d, not {conv}")
        up = cls(c_in, c_out)
        w = conv.weight.detach()  # (in, out, tap)
        with torch.no_grad():
            up.weight.copy_(torch.stack([w[:, :, [3, 1]], w[:, :, [2, 0]]]).permute(0, 2, 1, 3).reshape(2 * c_out, -1))
            up.bias.copy_(conv.bias.detach()[:, None])
        return up


def mish(x: Tensor) -> Tensor:
    """Mish, x * tanh(softplus(x)); for large tensors as the identity 2x / (1 + sigmoid(-x)^2) - x.

    torch's CPU mish kernel is scalar (~7 ns per element on AVX2): at batch 256 it took a fifth of a
    chunk. The identity runs on the vectorized sigmoid in 4 ops, 4x faster from ~16k elements, slower
    below (measured on a 2-core AMD EPYC, one thread); it differs from F.mish by < 2e-6."""
    if x.numel() < _MISH_IDENTITY_MIN_NUMEL or not x.is_cpu:
        return F.mish(x)
    nx = x.neg()
    s = torch.sigmoid(nx)
    return torch.addcdiv(nx, x, torch.addcmul(torch.ones((), dtype=x.dtype), s, s), value=2.0)


_MISH_IDENTITY_MIN_NUMEL = 8192


class SinusoidalPosEmb(nn.Module):
    """Transformer position encoding of the diffusion step: t (N,) -> (N, dim)."""

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000) / max(half - 1, 1)))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        x = t.float()[:, None] * self.freqs[None]
        return torch.cat([x.sin(), x.cos()], dim=-1)


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish, length preserved: (B, C_in, T) -> (B, C_out, T)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, n_groups: int):
        super().__init__()
        self.conv = Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2)
        self.norm = nn.GroupNorm(n_groups, c_out)

    def forward(self, x: Tensor) -> Tensor:
        n = self.norm  # the aten op: F.group_norm's Python-side checks cost more than the kernel at batch 1
        return mish(torch.group_norm(self.conv(x), n.num_groups, n.weight, n.bias, n.eps, False))


class ConditionalResidualBlock1D(nn.Module):
    """Two Conv1dBlocks, the first one's output modulated by the conditioning, plus a residual:
    (B, C_in, T), film -> (B, C_out, T)."""

    def __init__(self, c_in: int, c_out: int, step_dim: int, obs_dim: int, kernel_size: int, n_groups: int,
                 film: bool):
        super().__init__()
        self.conv1 = Conv1dBlock(c_in, c_out, kernel_size, n_groups)
        self.conv2 = Conv1dBlock(c_out, c_out, kernel_size, n_groups)
        self.step_dim, self.film = step_dim, film
        # Chi et al.: Mish -> Linear(cond_dim, 2C) -> (scale, bias) with film (cond_predict_scale), else bias
        self.cond = nn.Linear(step_dim + obs_dim, c_out * (2 if film else 1))
        self.residual = Conv1d(c_in, c_out, 1) if c_in != c_out else None

    def condition(self, step: Tensor, obs: Tensor) -> Film:
        """Mish'ed step embedding (..., E) and Mish'ed obs features (..., G), broadcastable ->
        (scale, bias) (..., C, 1), broadcast over time; scale is None without FiLM."""
        w = self.cond.weight
        c = (F.linear(step, w[:, :self.step_dim]) + F.linear(obs, w[:, self.step_dim:], self.cond.bias)).unsqueeze(-1)
        if self.film:
            scale, bias = c.chunk(2, dim=-2)
            return scale, bias
        return None, c

    def forward(self, x: Tensor, film: Film) -> Tensor:
        scale, bias = film
        out = self.conv1(x)
        out = torch.addcmul(bias, out, scale) if scale is not None else out + bias
        out = self.conv2(out)
        return out + (x if self.residual is None else self.residual(x))


class ConditionalUnet1D(nn.Module):
    """Noise prediction eps(x_t, t | obs): x_t (B, T, D_a) -> (B, T, D_a), T divisible by
    2 ** (len(down_dims) - 1), conditioned by `condition(timesteps, obs_features)`."""

    def __init__(self, action_dim: int, obs_dim: int, down_dims: list[int], kernel_size: int = 5, n_groups: int = 8,
                 step_embed_dim: int = 128, film: bool = True):
        super().__init__()
        e = step_embed_dim
        self.step_encoder = nn.Sequential(SinusoidalPosEmb(e), nn.Linear(e, 4 * e), nn.Mish(), nn.Linear(4 * e, e))

        def block(c_in: int, c_out: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(c_in, c_out, e, obs_dim, kernel_size, n_groups, film)

        dims = [action_dim, *down_dims]
        levels = list(zip(dims[:-1], dims[1:]))
        self.down = nn.ModuleList(nn.ModuleList([block(a, b), block(b, b)]) for a, b in levels)
        self.downsample = nn.ModuleList(Conv1d(b, b, 3, 2, 1) for _, b in levels[:-1])  # none after the last
        self.mid = nn.ModuleList([block(dims[-1], dims[-1]), block(dims[-1], dims[-1])])
        # up from the deepest level to level 1, each taking the skip of its level (level 0's is unused, as in Chi)
        self.up = nn.ModuleList(nn.ModuleList([block(2 * b, a), block(a, a)]) for a, b in reversed(levels[1:]))
        self.upsample = nn.ModuleList(Upsample1d(a, a) for a, _ in reversed(levels[1:]))
        self.final = nn.Sequential(Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
                                   Conv1d(down_dims[0], action_dim, 1))
        # the residual blocks in the order forward() uses them (references; registered above)
        self.blocks: list[ConditionalResidualBlock1D] = [
            *(b for pair in self.down for b in pair), *self.mid, *(b for pair in self.up for b in pair)]

    def condition(self, timesteps: Tensor, obs: Tensor) -> list[Film]:
        """For training: timesteps (B,), obs features (B, G) -> one Film of (B, C, 1) per block."""
        s = F.mish(self.step_encoder(timesteps))
        o = F.mish(obs)
        return [b.condition(s, o) for b in self.blocks]

    def condition_steps(self, timesteps: Tensor, obs: Tensor) -> list[list[Film]]:
        """For sampling: timesteps (S,), obs features (B, G) -> [step k][block] Film of (B, C, 1),
        computed in one batched pass (S x B) per block."""
        s = F.mish(self.step_encoder(timesteps)).unsqueeze(1)  # (S, 1, E)
        o = F.mish(obs)  # (B, G)
        per_block = []
        for b in self.blocks:
            scale, bias = b.condition(s, o)  # (S, B, C, 1)
            scales = scale.unbind(0) if scale is not None else (None,) * len(timesteps)
            per_block.append(list(zip(scales, bias.unbind(0))))
        return [list(films) for films in zip(*per_block)]

    def forward(self, x: Tensor, films: list[Film]) -> Tensor:
        """x: (B, T, D_a), films: one per block (from `condition`) -> eps (B, T, D_a)."""
        f = iter(films)
        x = x.transpose(1, 2)  # channels first from here on
        skips = []
        for i, (b1, b2) in enumerate(self.down):
            x = b2(b1(x, next(f)), next(f))
            if i > 0:
                skips.append(x)
            if i < len(self.downsample):
                x = self.downsample[i](x)
        for b in self.mid:
            x = b(x, next(f))
        for (b1, b2), up in zip(self.up, self.upsample):
            x = b2(b1(torch.cat([x, skips.pop()], dim=1), next(f)), next(f))
            x = up(x)
        return self.final(x).transpose(1, 2)


# ---- observation encoding -------------------------------------------------------------------------
def crop_images(x: Tensor, size: tuple[int, int], random: bool) -> Tensor:
    """(N, C, H, W) -> (N, C, h, w): a random crop per image (training) or the center crop (inference),
    as Diffusion Policy (robomimic's CropRandomizer) does."""
    n, c, hh, ww = x.shape
    h, w = size
    if (h, w) == (hh, ww):
        return x
    if not random:
        top, left = (hh - h) // 2, (ww - w) // 2
        return x[:, :, top:top + h, left:left + w]
    top = torch.randint(0, hh - h + 1, (n, 1, 1), device=x.device)
    left = torch.randint(0, ww - w + 1, (n, 1, 1), device=x.device)
    rows = top + torch.arange(h, device=x.device).view(1, h, 1)
    cols = left + torch.arange(w, device=x.device).view(1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    return x.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


class SpatialSoftmax(nn.Module):
    """Keypoints (Levine et al. 2016; robomimic): (N, C, H, W) -> (N, 2 * num_kp), the expected (x, y)
    in [-1, 1] under the softmax over pixels of each of num_kp learned 1x1-conv maps."""

    def __init__(self, c_in: int, num_kp: int = NUM_KEYPOINTS):
        super().__init__()
        self.keypoints = nn.Conv2d(c_in, num_kp, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        attn = self.keypoints(x).flatten(2).softmax(-1)  # (N, K, H*W)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=x.device), torch.linspace(-1, 1, w, device=x.device),
                                indexing="ij")
        grid = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1).to(attn.dtype)  # (H*W, 2)
        return (attn @ grid).flatten(1)


class ImageEncoder(nn.Module):
    """A small conv net trained from scratch: (N, 3, H, W) in [0, 1] -> (N, feature_dim).

    3x3 convs with GroupNorm (C / 16 groups) + ReLU (Chi et al. replace BatchNorm by GroupNorm:
    BatchNorm's running statistics do not mix with an EMA of the weights), then spatial-softmax
    keypoints or global average pooling, then a linear layer."""

    def __init__(self, feature_dim: int, pool: str = "spatial_softmax"):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c, stride in zip(IMAGE_CHANNELS, IMAGE_STRIDES):
            layers += [nn.Conv2d(c_in, c, 3, stride, 1), nn.GroupNorm(c // 16, c), nn.ReLU()]
            c_in = c
        self.backbone = nn.Sequential(*layers)
        if pool == "spatial_softmax":
            self.pool: nn.Module = SpatialSoftmax(c_in)
            pooled = 2 * NUM_KEYPOINTS
        else:
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            pooled = c_in
        self.out = nn.Linear(pooled, feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.pool(self.backbone(x * 2.0 - 1.0)))


class ObservationEncoder(nn.Module):
    """The global conditioning: obs[key] (B, n_obs_steps, *shape) normalized (cameras (B, T, 3, H, W)
    in [0, 1]) -> (B, n_obs_steps * step_dim), per step [state features..., camera features...]."""

    def __init__(self, state_dims: dict[str, int], image_shapes: dict[str, tuple[int, int, int]],
                 feature_dim: int, pool: str, crop_ratio: float, shared: bool):
        super().__init__()
        self.state_keys, self.image_keys = list(state_dims), list(image_shapes)
        self.crop = {k: (max(1, round(h * crop_ratio)), max(1, round(w * crop_ratio)))
                     for k, (_, h, w) in image_shapes.items()}
        n_enc = min(1, len(image_shapes)) if shared else len(image_shapes)
        self.cameras = nn.ModuleList(ImageEncoder(feature_dim, pool) for _ in range(n_enc))
        self.step_dim = sum(state_dims.values()) + feature_dim * len(image_shapes)

    def forward(self, obs: dict[str, Tensor]) -> Tensor:
        parts = [obs[k].flatten(2) for k in self.state_keys]
        for i, k in enumerate(self.image_keys):
            x = obs[k]
            b, t = x.shape[:2]
            img = crop_images(x.flatten(0, 1), self.crop[k], random=self.training)
            parts.append(self.cameras[i % len(self.cameras)](img).view(b, t, -1))
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        return x.flatten(1)
