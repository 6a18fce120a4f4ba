"""Structural similarity (SSIM) of one query against many 256x256 grayscale images at once.

The result equals ``skimage.metrics.structural_similarity(query, image)`` with its defaults on
``uint8`` arrays — 7x7 uniform window, ``data_range=255``, ``K1=0.01``, ``K2=0.03``, sample
covariance (N-1 normalisation), mean over the image less a 3-pixel border — to within about
1e-6 (tests hold it to 1e-5 against scikit-image, which cannot ship in the Lambda layer).

How it is fast: catalog images are stacked into one tall image so that each OpenCV call
(box filters, products) covers many images; the 3-pixel border that SSIM crops is exactly the
part where windows of neighbouring images would mix, so no padding is needed. Window sums and
the numerators ``n*Sxy - Sx*Sy`` and ``n*Sxx - Sx^2`` are computed exactly in int32 (all stay
below 2^31), so the only rounding is the final float32 ratio: about 1e-7 of SSIM.

Reference: Z. Wang, A. C. Bovik, H. R. Sheikh and E. P. Simoncelli, "Image quality assessment:
from error visibility to structural similarity", IEEE TIP 13(4), 2004.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

SIDE = 256
WINDOW = 7
_N = WINDOW * WINDOW
_PAD = (WINDOW - 1) // 2
_KSIZE = (WINDOW, WINDOW)
_DATA_RANGE = 255.0
_C1 = (0.01 * _DATA_RANGE) ** 2
_C2 = (0.03 * _DATA_RANGE) ** 2
# Both SSIM factors are ratios, so constant scale factors cancel: with window sums S (not
# means), A1 = 2*Sx*Sy + n^2*C1 over B1 = Sx^2 + Sy^2 + n^2*C1, and with the sample-covariance
# numerators D = n*Sxy - Sx*Sy, V = n*Sxx - Sx^2: A2 = 2*D + n(n-1)*C2 over Vx + Vy + n(n-1)*C2.
_LUM_C = _N * _N * _C1
_CON_C = _N * (_N - 1) * _C2


def _window_sums(stack_u8: np.ndarray, sums: np.ndarray, var: np.ndarray, scratch: np.ndarray) -> None:
    """Exact int32 window sums Sx and n*Sxx - Sx^2 of a (rows, 256) uint8 stack, into buffers."""
    cv2.boxFilter(stack_u8, cv2.CV_32S, _KSIZE, dst=sums, normalize=False, borderType=cv2.BORDER_CONSTANT)
    squares = cv2.sqrBoxFilter(stack_u8, cv2.CV_32F, _KSIZE, normalize=False, borderType=cv2.BORDER_CONSTANT)
    # Sxx <= 49 * 255^2 < 2^24 is exact in float32; the products below stay < 2^31.
    np.copyto(var, squares, casting="unsafe")
    var *= _N
    np.multiply(sums, sums, out=scratch)
    var -= scratch


class _Workspace:
    """Preallocated buffers for one chunk: fresh large arrays would page-fault on every call."""

    def __init__(self, rows: int) -> None:
        shape = (rows, SIDE)
        self.x_sums = np.empty(shape, np.int32)
        self.x_var = np.empty(shape, np.int32)
        self.int_a = np.empty(shape, np.int32)
        self.int_b = np.empty(shape, np.int32)
        self.product = np.empty(shape, np.float32)
        self.cross = np.empty(shape, np.float32)
        self.f_a = np.empty(shape, np.float32)
        self.f_b = np.empty(shape, np.float32)
        self.f_c = np.empty(shape, np.float32)
        self.f_d = np.empty(shape, np.float32)


class SsimQuery:
    """A query image prepared for :meth:`scores` against stacks of catalog images.

    Parameters
    ----------
    gray : ndarray of uint8, shape (256, 256)
        The query, as produced by :func:`harmony_image.features.seed_gray`.
    chunk : int, optional
        How many catalog images one OpenCV call covers; a few keep the working set in cache.

    Notes
    -----
    :meth:`scores` is thread-safe: each thread gets its own buffers.
    """

    def __init__(self, gray: np.ndarray, *, chunk: int = 4) -> None:
        _check_gray(gray, "query")
        self.chunk = chunk
        rows = chunk * SIDE
        self._tiled = np.tile(gray, (chunk, 1))
        self._sums = np.empty((rows, SIDE), np.int32)
        var = np.empty((rows, SIDE), np.int32)
        _window_sums(self._tiled, self._sums, var, np.empty((rows, SIDE), np.int32))
        sums_f = self._sums.astype(np.float32)
        self._lum = sums_f * sums_f + np.float32(_LUM_C)
        self._var = var.astype(np.float32) + np.float32(_CON_C)
        valid = np.zeros((chunk, SIDE), dtype=bool)
        valid[:, _PAD : SIDE - _PAD] = True
        self._valid_rows = valid.reshape(-1)
        self._local = threading.local()

    def scores(self, grays: np.ndarray) -> np.ndarray:
        """SSIM of the query against each image of ``grays`` (shape (m, 256, 256), uint8).

        Returns float64 array of shape (m,).
        """
        m = grays.shape[0]
        out = np.empty(m, dtype=np.float64)
        work = getattr(self._local, "work", None)
        if work is None:
            work = self._local.work = _Workspace(self.chunk * SIDE)
        for lo in range(0, m, self.chunk):
            hi = min(lo + self.chunk, m)
            out[lo:hi] = self._chunk(grays[lo:hi], work)
        return out

    def _chunk(self, grays: np.ndarray, work: _Workspace) -> np.ndarray:
        m = grays.shape[0]
        rows = m * SIDE
        x = np.ascontiguousarray(grays).reshape(rows, SIDE)
        x_sums, x_var, sum_product, cov = (a[:rows] for a in (work.x_sums, work.x_var, work.int_a, work.int_b))
        product, cross, con_num, con_den, lum_num, lum_den = (
            a[:rows] for a in (work.product, work.cross, work.f_a, work.f_b, work.f_c, work.f_d)
        )
        _window_sums(x, x_sums, x_var, sum_product)
        cv2.multiply(x, self._tiled[:rows], dst=product, dtype=cv2.CV_32F)
        cv2.boxFilter(product, cv2.CV_32F, _KSIZE, dst=cross, normalize=False, borderType=cv2.BORDER_CONSTANT)
        np.multiply(x_sums, self._sums[:rows], out=sum_product)
        # D = n*Sxy - Sx*Sy, exact in int32 (Sxy <= 49*255^2 is exact in float32)
        np.copyto(cov, cross, casting="unsafe")
        cov *= _N
        cov -= sum_product
        # A2 = 2*D + n(n-1)*C2 over B2 = Vx + Vy + n(n-1)*C2
        np.multiply(cov, np.float32(2.0), out=con_num, casting="unsafe")
        con_num += np.float32(_CON_C)
        np.add(x_var, self._var[:rows], out=con_den, casting="unsafe")
        # A1 = 2*Sx*Sy + n^2*C1 over B1 = Sx^2 + Sy^2 + n^2*C1
        np.multiply(sum_product, np.float32(2.0), out=lum_num, casting="unsafe")
        lum_num += np.float32(_LUM_C)
        np.copyto(product, x_sums, casting="unsafe")
        np.multiply(product, product, out=lum_den)
        lum_den += self._lum[:rows]
        lum_num *= con_num
        lum_den *= con_den
        cv2.divide(lum_num, lum_den, dst=con_num)
        inner = con_num[:, _PAD : SIDE - _PAD]
        row_sums = cv2.reduce(inner, 1, cv2.REDUCE_SUM, dtype=cv2.CV_64F)[:, 0]
        per_image = row_sums[self._valid_rows[:rows]].reshape(m, SIDE - 2 * _PAD).sum(axis=1)
        mean: np.ndarray = per_image / float((SIDE - 2 * _PAD) ** 2)
        return mean


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two 256x256 ``uint8`` images, as scikit-image computes it with defaults."""
    return float(SsimQuery(a, chunk=1).scores(b[None])[0])


def _check_gray(gray: np.ndarray, name: str) -> None:
    if gray.dtype != np.uint8 or gray.shape != (SIDE, SIDE):
        raise ValueError(
            f"{name} must be a uint8 array of shape ({SIDE}, {SIDE}); got {gray.dtype} {gray.shape}. "
            "Use harmony_image.features.seed_gray() to make one."
        )
