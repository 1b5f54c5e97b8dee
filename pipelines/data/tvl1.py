"""TV-L1 optical flow in torch: OpenCV's DualTVL1OpticalFlow, batched over frame pairs, on CPU or CUDA.

The model (Zach, Pock and Bischof 2007, "A duality based approach for realtime TV-L1 optical
flow"; the scheme of Sánchez, Meinhardt-Llopis and Facciolo 2013, which OpenCV follows) finds the
flow u = (u1, u2) from I0 to I1 minimising

    E(u) = sum_x |grad u1| + |grad u2| + lambda * |rho(u)|,   rho(u) = I1(x + u0) + grad I1(x + u0) . (u - u0) - I0(x)

(the brightness constancy I0(x) = I1(x + u) linearised around u0, the flow at the last warp).
With an auxiliary v coupled to u by (1 / 2 theta) |u - v|^2 the two parts alternate:

    TH:   v = u - clamp(rho(u) / |grad I1w|^2, -lambda theta, lambda theta) * grad I1w
    u:    u = v + theta * div p
    dual: p = (p + (tau / theta) grad u) / (1 + (tau / theta) |grad u|)        (one p per flow component)

with forward differences for grad u (zero on the last column / row) and the matching backward
differences for div p. A warp fixes u0, samples I1 and its centred gradient at x + u0 (bicubic,
zero outside the frame) and then iterates the three steps until the mean squared change of u
falls below epsilon^2 or `inner_iterations * outer_iterations` steps are done, applying a
`median_filtering` x `median_filtering` median to u before each block of `inner_iterations`.
Each level of a pyramid (factor `scale_step`, bilinear, levels of at least 16 px) runs `warps`
warps, coarsest first, with p restarted at zero and u carried up (bilinear, divided by scale_step).

This follows OpenCV's `modules/optflow/src/tvl1flow.cpp` (opencv_contrib) step for step and with
its defaults (`TVL1Params`), including the per-pair stopping rule (at the defaults most warps stop
after 25-60 steps): a pair that stops leaves the batch while the others go on, so its flow does
not depend on the batch it is in (up to floating-point rounding: < 0.01 px mean end-point error).
On real frame pairs it agrees with cv2.optflow.DualTVL1OpticalFlow to ~0.005 px mean end-point
error. On the CPU two steps call OpenCV's own kernels on the tensors' memory (cv2.medianBlur, and
cv2.magnitude for |grad u|, ~3x faster than torch's square root here); elsewhere they are torch.

Speed (benchmarks/flow.py, README): the iterations are torch operations on preallocated buffers,
with the variables scaled so that a step is 17 in-place operations over flat contiguous views;
on a 2-core CPU that is 3-7x OpenCV's frames/s. torch.compile did not pay here: ~25 s to compile
in each process (each Ray worker pays it; 11-13 s from a warm cache) for a step only 10-20%
faster (5.3-6.2 against 6.6-8 ns per pixel and step, under load).

`tvl1_flow(I0, I1)` maps grey frames [B, H, W] (0..255) to flow [B, H, W, 2] (x then y, pixels
per frame) with I0(y, x) ~ I1(y + fy, x + fx), OpenCV's convention. A pure function of its inputs.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

MIN_LEVEL_SIDE = 16  # OpenCV stops the pyramid at the first level narrower or lower than this
# Pixels per batch of pairs at one pyramid level on the CPU: large enough that torch's ~5 us per
# operation is amortised, small enough that the step's ~90 bytes per pixel stay in cache.
CPU_BATCH_PIXELS = 131072
# Elsewhere (CUDA): 16M pixels (~220 pairs at 320x240) keep each operation far above a kernel
# launch's cost while the buffers stay ~2 GB.
DEVICE_BATCH_PIXELS = 1 << 24


@dataclass(frozen=True)
class TVL1Params:
    """OpenCV's DualTVL1OpticalFlow defaults (`OpticalFlowDual_TVL1()` in tvl1flow.cpp)."""

    tau: float = 0.25  # time step of the dual update
    lam: float = 0.15  # weight of the data term (OpenCV's lambda)
    theta: float = 0.3  # coupling of u and v
    nscales: int = 5  # pyramid levels
    warps: int = 5  # warps per level
    epsilon: float = 0.01  # stopping threshold on the root-mean-square change of u per step
    inner_iterations: int = 30
    outer_iterations: int = 10
    scale_step: float = 0.8
    median_filtering: int = 5  # median window applied before each block of inner iterations (<= 1: none)

    def __post_init__(self) -> None:
        for name in ("tau", "lam", "theta", "epsilon"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("nscales", "warps", "inner_iterations", "outer_iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not 0 < self.scale_step < 1:
            raise ValueError(f"scale_step must lie in (0, 1), got {self.scale_step!r}")
        if self.median_filtering > 1 and self.median_filtering % 2 == 0:
            raise ValueError(f"median_filtering must be odd (or <= 1 for none), got {self.median_filtering!r}")


def _linear_resize_matrix(n_in: int, n_out: int, scale: float) -> np.ndarray:
    """[n_out, n_in] weights of OpenCV's INTER_LINEAR resize along one axis (half-pixel centres,
    edge pixels replicated); `scale` is source pixels per destination pixel."""
    m = np.zeros((n_out, n_in), np.float64)
    pos = (np.arange(n_out) + 0.5) * scale - 0.5
    left = np.floor(pos).astype(np.int64)
    frac = pos - left
    frac[left < 0] = 0.0  # OpenCV: a position left of the first centre takes the first pixel
    left = np.clip(left, 0, n_in - 1)
    frac[left >= n_in - 1] = 0.0
    right = np.minimum(left + 1, n_in - 1)
    rows = np.arange(n_out)
    np.add.at(m, (rows, left), 1.0 - frac)
    np.add.at(m, (rows, right), frac)
    return m


def _resize(x: torch.Tensor, size: tuple[int, int], scale: tuple[float, float]) -> torch.Tensor:
    """OpenCV's bilinear resize of [..., H, W] to `size` (h, w) with the given source-per-destination scales."""
    h, w = x.shape[-2:]
    ry = torch.from_numpy(_linear_resize_matrix(h, size[0], scale[0])).to(x)
    rx = torch.from_numpy(_linear_resize_matrix(w, size[1], scale[1])).to(x)
    return torch.matmul(torch.matmul(ry, x), rx.T)


def _level_sizes(h: int, w: int, p: TVL1Params) -> list[tuple[int, int]]:
    """Pyramid sizes, finest first: each OpenCV's round(side * scale_step), while both sides stay >= 16."""
    sizes = [(h, w)]
    for _ in range(1, p.nscales):
        ph, pw = sizes[-1]
        nh, nw = int(round(ph * p.scale_step)), int(round(pw * p.scale_step))
        if nh < MIN_LEVEL_SIDE or nw < MIN_LEVEL_SIDE:
            break
        sizes.append((nh, nw))
    return sizes


def _centred_gradient(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Half the central difference inside, half the one-sided difference on the edges (OpenCV's)."""
    dx = torch.empty_like(img)
    dy = torch.empty_like(img)
    dx[..., 1:-1] = 0.5 * (img[..., 2:] - img[..., :-2])
    dx[..., 0] = 0.5 * (img[..., 1] - img[..., 0])
    dx[..., -1] = 0.5 * (img[..., -1] - img[..., -2])
    dy[..., 1:-1, :] = 0.5 * (img[..., 2:, :] - img[..., :-2, :])
    dy[..., 0, :] = 0.5 * (img[..., 1, :] - img[..., 0, :])
    dy[..., -1, :] = 0.5 * (img[..., -1, :] - img[..., -2, :])
    return dx, dy


def _sample_bicubic(stack: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Sample `stack` [B, C, H, W] at x + u (u [B, 2, H, W], pixels) bicubically, zero outside:
    OpenCV's remap with INTER_CUBIC and BORDER_CONSTANT (both use Keys' a = -0.75).

    In float64 (pass a float64 stack; the result is float32): grid_sample's coordinates are
    normalised to [-1, 1] and back, and in float32 that round trip lands ~1e-5 px off, so a flow of
    exactly 0 sampled ~1e-3 grey levels off and the warps grew that into up to ~2 px of flow
    between two identical frames. (Gathering the 16 taps in float32 is exact too, but 2.4x slower.)
    """
    b, _, h, w = stack.shape
    f64 = torch.float64
    x = u[:, 0].to(f64) + torch.arange(w, dtype=f64, device=u.device)
    y = u[:, 1].to(f64) + torch.arange(h, dtype=f64, device=u.device)[:, None]
    grid = torch.stack((x * (2.0 / (w - 1)) - 1.0, y * (2.0 / (h - 1)) - 1.0), dim=-1)
    out = F.grid_sample(stack, grid, mode="bicubic", padding_mode="zeros", align_corners=True)
    return out.to(torch.float32)


# Elements of the k*k shifted copies the torch median holds at a time (k*k times the images').
MEDIAN_CHUNK_ELEMENTS = 1 << 26


def median_blur(x: torch.Tensor, k: int, out: torch.Tensor | None = None, opencv: bool | None = None) -> torch.Tensor:
    """k x k median of [..., H, W] with edge pixels replicated, as cv2.medianBlur filters float images.

    With `opencv` (default: on CPU tensors, for windows of 3 or 5, the float32 windows cv2 takes)
    this is cv2.medianBlur itself, image by image (~0.1 ms at 160x120); else a torch median of the
    k*k shifted copies. `out` (contiguous, the shape of x) receives it.
    """
    out = torch.empty_like(x, memory_format=torch.contiguous_format) if out is None else out
    if opencv is None:
        opencv = x.device.type == "cpu" and k <= 5
    src = x.reshape(-1, *x.shape[-2:])
    dst = out.view(-1, *x.shape[-2:])
    if opencv:
        import cv2

        src_np, dst_np = src.contiguous().numpy(), dst.numpy()
        for i in range(src_np.shape[0]):
            cv2.medianBlur(src_np[i], k, dst=dst_np[i])
        return out
    r = k // 2
    step = max(1, MEDIAN_CHUNK_ELEMENTS // (k * k * src[0].numel()))
    for j in range(0, src.shape[0], step):
        padded = F.pad(src[j:j + step, None], (r, r, r, r), mode="replicate")
        dst[j:j + step] = torch.median(F.unfold(padded, k), dim=1).values.view(-1, *x.shape[-2:])
    return out


class _Step:
    """One iteration for the first k running pairs: views of the level's buffers, made once.

    u' is read from buffer `src` and written to `dst`. Scaled variables (see `_Level`): u' = taut u
    and q = tau p, so grad u' is what the dual step adds to p and div q what the u step adds to u'.
    """

    def __init__(self, lv: _Level, k: int, src: int, dst: int):
        cur, nxt = lv.u[src, :k], lv.u[dst, :k]
        self.cur, self.nxt = cur, nxt
        self.u1, self.u2 = cur[:, 0], cur[:, 1]
        self.a, self.bx, self.by, self.g = lv.a[:k], lv.bx[:k], lv.by[:k], lv.g[:k]
        self.t = lv.t[:k]
        self.t1 = self.t.unsqueeze(1)
        self.w = lv.w[:k]  # the change of u' this step
        self.w_flat = self.w.view(k, -1)
        self.q = lv.q[:, :k]  # [x/y, pair, component, H, W]
        self.qx, self.qy = self.q[0], self.q[1]
        self.du = lv.du[:, :k]
        self.dux, self.duy = self.du[0], self.du[1]
        # The differences run over flat (contiguous, so vectorised) views: a shift by one element
        # (x) or one row (y) that crosses into the previous row or image meets the last column of
        # qx / the last row of qy, which stay 0 (grad u' is 0 there, and q starts at 0); the forward
        # differences that cross are set back to 0 after each step.
        wid = lv.u.shape[-1]
        self.wid = wid
        w_flat, qx_flat, qy_flat = self.w.view(-1), self.qx.reshape(-1), self.qy.reshape(-1)
        self.w_after_x, self.qx_before = w_flat[1:], qx_flat[:-1]
        self.w_after_y, self.qy_before = w_flat[wid:], qy_flat[:-wid]
        nxt_flat, dux_flat, duy_flat = nxt.reshape(-1), self.dux.reshape(-1), self.duy.reshape(-1)
        self.nxt_next_x, self.nxt_x, self.dux_flat = nxt_flat[1:], nxt_flat[:-1], dux_flat[:-1]
        self.nxt_next_y, self.nxt_y, self.duy_flat = nxt_flat[wid:], nxt_flat[:-wid], duy_flat[:-wid]
        self.dux_last, self.duy_last = self.dux[..., -1], self.duy[..., -1, :]
        self.n = lv.n[:k]
        # On the CPU, cv2.magnitude takes |grad u'|: ~3x faster than torch's square root here (0.27
        # against 0.81 ns per element; torch.hypot 2.0), which made it the step's costliest part.
        width = self.n.shape[-1]
        self.cv_views = (tuple(x.numpy().reshape(-1, width) for x in (self.dux, self.duy, self.n))
                         if lv.opencv else None)

    def __call__(self, lt: float, tau: float) -> torch.Tensor:
        """Run the step; returns each pair's root sum of squared changes of u' ([k])."""
        t, w = self.t, self.w
        # TH: v = u - clamp(rho / |grad I1w|^2, -lambda theta, lambda theta) grad I1w, rho / |grad|^2 = a + b . u
        torch.addcmul(self.a, self.bx, self.u1, out=t)
        t.addcmul_(self.by, self.u2).clamp_(-lt, lt)
        # u = v + theta div p, i.e. u' = v' + div q: w = div q - t grad I1w', by backward differences
        # (q = 0 before the first row / column)
        torch.add(self.qx, self.qy, out=w)
        self.w_after_x.sub_(self.qx_before)
        self.w_after_y.sub_(self.qy_before)
        w.addcmul_(self.t1, self.g, value=-1.0)
        torch.add(self.cur, w, out=self.nxt)
        err = torch.linalg.vector_norm(self.w_flat, dim=1)
        # dual: q = (q + tau grad u') / (1 + |grad u'|), forward differences (0 on the last column / row)
        torch.sub(self.nxt_next_x, self.nxt_x, out=self.dux_flat)
        self.dux_last.zero_()
        torch.sub(self.nxt_next_y, self.nxt_y, out=self.duy_flat)
        self.duy_last.zero_()
        if self.cv_views is not None:
            import cv2

            dux, duy, n = self.cv_views
            cv2.magnitude(dux, duy, magnitude=n)
        else:
            torch.mul(self.dux, self.dux, out=self.n).addcmul_(self.duy, self.duy).sqrt_()
        self.q.add_(self.du, alpha=tau).div_(self.n.add_(1.0))
        return err


class _Level:
    """The warps and iterations of one pyramid level for a batch of pairs, on preallocated buffers.

    Variables are scaled to save arithmetic: u' = (tau / theta) u, whose forward differences are
    the (tau / theta) grad u the dual step adds to p, and q = tau p, whose divergence is the
    (tau / theta) theta div p the u step adds to u'. The stopping threshold is scaled to match.
    """

    def __init__(self, p: TVL1Params, i0: torch.Tensor, i1: torch.Tensor, opencv: bool):
        self.p = p
        self.i0 = i0
        self.opencv = opencv  # OpenCV's kernels for the median and |grad u'| (CPU tensors only)
        b, h, w = i0.shape
        self.taut = p.tau / p.theta
        ix, iy = _centred_gradient(i1)
        self.i1_stack = torch.stack((i1, ix, iy), dim=1).to(torch.float64)  # see _sample_bicubic
        # A pair stops once sum |u_new - u|^2 <= epsilon^2 * H * W (OpenCV's test), in u' units.
        self.stop_norm = p.epsilon * math.sqrt(h * w) * self.taut
        new = functools.partial(torch.empty, dtype=i0.dtype, device=i0.device)
        # [x/y, pair, component, H, W]: the x and y parts of all pairs are each one contiguous block
        self.dual = torch.zeros(2, b, 2, h, w, dtype=i0.dtype, device=i0.device)  # q of every pair, across warps
        self.q = new(2, b, 2, h, w)  # q of the running pairs
        self.du = torch.zeros(2, b, 2, h, w, dtype=i0.dtype, device=i0.device)
        self.u = new(2, b, 2, h, w)  # u' now and next, swapped each step
        self.w = new(b, 2, h, w)
        self.t = new(b, h, w)
        self.n = new(b, 2, h, w)
        self.a = self.bx = self.by = self.g = self.t  # set per warp

    def run(self, u: torch.Tensor) -> torch.Tensor:
        """All warps of the level from flow u [B, 2, H, W] (pixels); returns the refined flow."""
        us = u * self.taut
        for _ in range(self.p.warps):
            self._warp(us)
        return us.div_(self.taut)

    def _warp(self, us: torch.Tensor) -> None:
        """One warp: linearise at us, then iterate until every pair meets the stopping test; us is updated."""
        p, taut, lt = self.p, self.taut, self.p.lam * self.p.theta
        i1w, i1wx, i1wy = _sample_bicubic(self.i1_stack, us / taut).unbind(1)
        inv = (i1wx * i1wx + i1wy * i1wy).clamp_min_(1e-12).reciprocal_()
        # rho(u) / |grad I1w|^2 = a + bx u1' + by u2', with rho's constant part at the warp's u
        self.a = (i1w - (i1wx * us[:, 0] + i1wy * us[:, 1]) / taut - self.i0).mul_(inv)
        self.bx = i1wx * inv / taut
        self.by = i1wy * inv / taut
        self.g = torch.stack((i1wx, i1wy), dim=1).mul_(taut)
        # Rows 0..k-1 of the buffers hold the pairs `active`; `running` marks those not yet stopped.
        # A pair that stops has its u' and q saved at once and leaves the rows at the next
        # compaction, when a quarter of them have stopped: a compaction costs about a quarter of a
        # step, and a GPU batch of ~200 pairs would otherwise compact ~200 times a warp.
        active = torch.arange(us.shape[0], device=us.device)
        running = torch.ones_like(active, dtype=torch.bool)
        self.u[0].copy_(us)
        self.q.copy_(self.dual)
        src, steps = 0, {}
        for it in range(p.inner_iterations * p.outer_iterations):
            k = active.numel()
            if it % p.inner_iterations == 0 and p.median_filtering > 1:
                median_blur(self.u[src, :k], p.median_filtering, out=self.u[1 - src, :k],
                            opencv=self.opencv and p.median_filtering <= 5)
                src = 1 - src
            step = steps.get(src) or steps.setdefault(src, _Step(self, k, src, 1 - src))
            err = step(lt, p.tau)
            src = 1 - src
            if float(err.min()) > self.stop_norm:
                continue
            stopped = (err <= self.stop_norm) & running
            rows = stopped.nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            us[active[rows]] = self.u[src, rows]
            self.dual[:, active[rows]] = self.q[:, rows]
            running &= ~stopped
            left = int(running.sum())
            if left == 0:
                return
            if k - left < max(1, k // 4):
                continue
            keep = running.nonzero().squeeze(1)
            active, running = active[keep], running[keep]
            for buf in (self.u[src], self.a, self.bx, self.by, self.g):
                buf[:left] = buf[keep]
            self.q[:, :left] = self.q[:, keep]
            steps = {}
        rows = running.nonzero().squeeze(1)
        us[active[rows]] = self.u[src, rows]
        self.dual[:, active[rows]] = self.q[:, rows]


def _run_threaded(fn, items: list, n_threads: int) -> None:
    """fn(item) for every item on n_threads Python threads, each torch operation on its calling
    thread: torch's own intra-op threads wait at a barrier after every one of the step's small
    operations, which on a loaded 2-core machine made the solver ~10x slower than one thread."""
    from concurrent.futures import ThreadPoolExecutor

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(n_threads) as pool:
            for _ in pool.map(fn, items):
                pass
    finally:
        torch.set_num_threads(before)


def tvl1_flow(i0: torch.Tensor | np.ndarray, i1: torch.Tensor | np.ndarray, params: TVL1Params | None = None,
              device: str | torch.device | None = None, batch_pixels: int | None = None,
              threads: int = 1, opencv_kernels: bool | None = None) -> torch.Tensor:
    """TV-L1 flow from each frame of `i0` to the same frame of `i1`: float32 [B, H, W, 2], x then y.

    `i0`, `i1`: grey frames [B, H, W] (or one [H, W] pair), uint8 or float in 0..255. Computed on
    `device` (default: the inputs' device); the result stays there. Each pyramid level runs its
    pairs in batches of about `batch_pixels` pixels (default: CPU_BATCH_PIXELS on the CPU,
    DEVICE_BATCH_PIXELS elsewhere; 0: all at once); on the CPU, `threads` > 1 runs the batches on that
    many Python threads (each operation then on its own thread: see `_run_threaded`), 1 runs them
    here with torch's threads. The batches are independent: neither changes the flow, only the speed.
    `opencv_kernels` (default: on the CPU) takes the median and |grad u| from OpenCV (see above).
    """
    p = params or TVL1Params()
    a = torch.as_tensor(i0)
    b = torch.as_tensor(i1)
    if a.shape != b.shape:
        raise ValueError(f"i0 and i1 must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    single = a.ndim == 2
    if single:
        a, b = a[None], b[None]
    if a.ndim != 3:
        raise ValueError(f"expected grey frames [B, H, W] or [H, W], got shape {tuple(a.shape)}")
    bsz, h, w = a.shape
    if h < 3 or w < 3:
        raise ValueError(f"frames must be at least 3x3 pixels for TV-L1, got {w}x{h}")
    dev = torch.device(device) if device is not None else a.device
    a = a.to(dev, torch.float32)
    b = b.to(dev, torch.float32)
    if bsz == 0:
        return torch.zeros(0, h, w, 2, device=dev)
    sizes = _level_sizes(h, w, p)
    i0s, i1s = [a], [b]
    for lh, lw in sizes[1:]:
        scale = (1.0 / p.scale_step, 1.0 / p.scale_step)
        i0s.append(_resize(i0s[-1], (lh, lw), scale))
        i1s.append(_resize(i1s[-1], (lh, lw), scale))
    budget = (CPU_BATCH_PIXELS if dev.type == "cpu" else DEVICE_BATCH_PIXELS) if batch_pixels is None else batch_pixels
    opencv = dev.type == "cpu" if opencv_kernels is None else opencv_kernels
    if opencv and dev.type != "cpu":
        raise ValueError(f"opencv_kernels=True needs CPU tensors, got device {dev}; leave it unset (auto)")
    n_threads = max(1, threads) if dev.type == "cpu" else 1
    u = torch.zeros(bsz, 2, *sizes[-1], device=dev)
    for s in range(len(sizes) - 1, -1, -1):
        lh, lw = sizes[s]
        step = bsz if budget <= 0 else max(1, budget // (lh * lw))
        n_batches = max(-(-bsz // step), min(n_threads, bsz))  # every thread gets a batch
        step = -(-bsz // n_batches)  # batches of equal size: no small one left at the end
        batches = [slice(j, j + step) for j in range(0, bsz, step)]

        def level(sl: slice, s: int = s, u: torch.Tensor = u) -> None:
            u[sl] = _Level(p, i0s[s][sl], i1s[s][sl], opencv).run(u[sl])

        if n_threads > 1 and len(batches) > 1:
            _run_threaded(level, batches, n_threads)
        else:
            for sl in batches:
                level(sl)
        if s == 0:
            break
        (ch, cw), (fh, fw) = sizes[s], sizes[s - 1]
        u = _resize(u, (fh, fw), (ch / fh, cw / fw)) * (1.0 / p.scale_step)
    flow = u.permute(0, 2, 3, 1).contiguous()
    return flow[0] if single else flow
