"""Sky background: estimate a smooth model with sep and subtract it.

The model is SExtractor's, through :class:`sep.Background`: the image is cut
into boxes of ``box_size_pix``; each box gives a clipped mode (level) and a
clipped standard deviation (rms); the box values are median-filtered over
``filter_size_boxes`` boxes and interpolated back to every pixel with a
bicubic spline. Pixels in ``mask_planes`` are ignored (LSST masks ``DETECTED``
so that bright sources do not bias the sky; see
:func:`calibration.detection.detect_and_refine_background`).

:class:`BackgroundModel` is the engine's ``calexpBackground``: as LSST's, it
keeps the binned model (sep's spline nodes of level and rms), the global
figures and the config, and rebuilds the full-resolution planes from them with
sep's own interpolation (:func:`spline_matrix`), so a person can add the
subtracted background back to within float32 rounding from a file of a few kB.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import sep
from astropy.io import fits

from .configbase import config_from_dict, doc_field
from .errors import BadExposureError, ConfigError
from .exposure import Exposure, MaskPlane, planes_set
from .stats import LeastSquares

__all__ = [
    "BackgroundConfig",
    "BackgroundModel",
    "estimate_background",
    "subtract_background",
    "plane_bits",
    "spline_matrix",
]

#: FITS header keyword of each config field (cards of the PRIMARY HDU).
_CONFIG_CARDS = {
    "box_size_pix": "BKGBOX",
    "filter_size_boxes": "BKGFILT",
    "filter_threshold": "BKGFTHR",
    "mask_planes": "BKGMASK",
}


def plane_bits(planes: tuple[str, ...] | list[str]) -> int:
    """OR of the :class:`~calibration.exposure.MaskPlane` bits named in ``planes``.

    Raises
    ------
    ConfigError
        When a name is not a mask plane.
    """
    unknown = [p for p in planes if p not in MaskPlane.__members__]
    if unknown:
        raise ConfigError(
            f"unknown mask plane(s) {', '.join(unknown)}; known: {', '.join(MaskPlane.__members__)}",
            stage="config",
            unknown=unknown,
        )
    bits = 0
    for p in planes:
        bits |= int(MaskPlane[p])
    return bits


@dataclasses.dataclass(frozen=True)
class BackgroundConfig:
    """Configuration of :func:`estimate_background`."""

    box_size_pix: int = doc_field(
        128, "Side of the square boxes (pix) in which the sky level and rms are estimated."
    )
    filter_size_boxes: int = doc_field(
        3, "Side (in boxes) of the median filter applied to the box values; 1 = no filter."
    )
    filter_threshold: float = doc_field(
        0.0,
        "Filter a box only if it differs from the median of its neighbours by more than "
        "this (ADU); 0 filters every box (SExtractor's BACK_FILTERTHRESH).",
    )
    mask_planes: tuple[str, ...] = doc_field(
        ("BAD", "SAT", "NO_DATA", "DETECTED", "CR"),
        "Mask planes whose pixels are ignored when estimating the background.",
    )

    def validate(self) -> None:
        """Check ranges and plane names; raise ValueError on a bad value."""
        if self.box_size_pix < 2:
            raise ValueError(f"box_size_pix must be >= 2, got {self.box_size_pix}")
        if self.filter_size_boxes < 1:
            raise ValueError(f"filter_size_boxes must be >= 1, got {self.filter_size_boxes}")
        if not np.isfinite(self.filter_threshold) or self.filter_threshold < 0:
            raise ValueError(f"filter_threshold must be >= 0, got {self.filter_threshold}")
        plane_bits(self.mask_planes)


def _block_mean_rows(a: np.ndarray, factor: int) -> np.ndarray:
    """Means of consecutive groups of ``factor`` rows of ``a`` (the last group may be shorter)."""
    starts = np.arange(0, a.shape[0], factor)
    return np.add.reduceat(a, starts, axis=0) / np.diff(np.append(starts, a.shape[0]))[:, None]


def _block_mean(plane: np.ndarray, factor: int) -> np.ndarray:
    """``plane`` averaged over ``factor x factor`` blocks, edge blocks over the pixels they hold."""
    rows = _block_mean_rows(np.asarray(plane, float), factor)
    return _block_mean_rows(rows.T, factor).T.astype(np.float32)


class BackgroundModel:
    """A fitted sky background (the engine's ``calexpBackground``).

    The model is kept as sep's box mesh and spline: the full-resolution planes
    are evaluated when asked for (about 40 ms each on 4096 x 4096), so that a
    calibration does not hold two extra image-sized planes. A model read back
    from a file (or unpickled) holds the mesh and rebuilds the planes with
    :func:`spline_matrix` (old files with full planes are read as they are).

    Attributes
    ----------
    level_image : ndarray of float32, shape (ny, nx)
        Sky level of every pixel (ADU), indexed ``[y, x]``: exactly what
        :func:`subtract_background` subtracts. A new array on every access of
        a fitted model.
    rms_image : ndarray of float32, shape (ny, nx)
        Sky noise of every pixel (ADU), the spline-interpolated box rms.
    mesh_level : ndarray of float32, shape (n_box_y, n_box_x)
        Model level at the spline nodes (ADU), one per box: box ``(j, i)``
        covers rows ``j*box .. min((j+1)*box, ny)-1`` and columns likewise
        (the last box of a row or column may be partial); its node lies at
        ``y = (j + 0.5) box``, ``x = (i + 0.5) box - 0.5`` (sep's and
        SExtractor's convention). The filtered box values.
    mesh_rms : ndarray of float32, shape (n_box_y, n_box_x)
        Model rms at the same nodes (ADU).
    global_level_adu : float
        Median of the box levels (ADU).
    global_rms_adu : float
        Median of the box rms (ADU).
    config : BackgroundConfig
        The configuration the model was estimated with.
    """

    def __init__(
        self,
        *,
        level_image: np.ndarray | None = None,
        rms_image: np.ndarray | None = None,
        mesh_level: np.ndarray | None = None,
        mesh_rms: np.ndarray | None = None,
        global_level_adu: float,
        global_rms_adu: float,
        config: BackgroundConfig,
        sep_background: Any = None,
        shape: tuple[int, int] | None = None,
    ) -> None:
        planes = level_image is not None and rms_image is not None
        mesh = mesh_level is not None and mesh_rms is not None and shape is not None
        if sep_background is None and not (planes or mesh):
            raise ValueError("a BackgroundModel needs level_image and rms_image, a mesh and a shape, "
                             "or a sep background")
        self._level = level_image
        self._rms = rms_image
        self._sep = sep_background
        self._shape = tuple(shape) if shape is not None else tuple(level_image.shape)  # type: ignore[union-attr]
        self.global_level_adu = float(global_level_adu)
        self.global_rms_adu = float(global_rms_adu)
        self.config = config
        #: Constant added to sep's spline (ADU): the mean-sky correction of detection.reestimate_background.
        self.offset_adu = 0.0
        self._mesh_level = mesh_level
        self._mesh_rms = mesh_rms
        self._ops: tuple[np.ndarray, np.ndarray] | None = None  # see _operators
        self._solve: tuple[LeastSquares, LeastSquares] | None = None  # see _solvers

    def __repr__(self) -> str:
        return (f"BackgroundModel(shape={self.shape}, global_level_adu={self.global_level_adu:.6g}, "
                f"global_rms_adu={self.global_rms_adu:.6g}, config={self.config!r})")

    def __getstate__(self) -> dict[str, Any]:
        # sep's Background cannot be pickled: keep its mesh instead (the planes follow from it).
        state = dict(self.__dict__)
        if state["_sep"] is not None:
            state["_mesh_level"], state["_mesh_rms"] = self.mesh_level, self.mesh_rms
            state["_sep"] = None
            state["offset_adu"] = 0.0  # now inside the mesh
        state["_ops"] = state["_solve"] = None  # rebuilt when needed: a few MB for a large image
        return state

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of the image the model was fitted to."""
        return self._shape  # type: ignore[return-value]

    @property
    def level_image(self) -> np.ndarray:
        """Full-resolution sky level (ADU, float32, ``[y, x]``)."""
        if self._level is not None:
            return self._level
        if self._sep is None:
            return self._evaluate(self._mesh_level)
        level = np.asarray(self._sep.back(dtype=np.float32))
        if self.offset_adu:
            level += np.float32(self.offset_adu)
        return level

    @property
    def rms_image(self) -> np.ndarray:
        """Full-resolution sky rms (ADU, float32, ``[y, x]``)."""
        if self._rms is not None:
            return self._rms
        if self._sep is None:
            return self._evaluate(self._mesh_rms)
        return np.asarray(self._sep.rms(dtype=np.float32))

    @property
    def mesh_level(self) -> np.ndarray:
        if self._mesh_level is None:
            self._mesh_level = self._nodes(self.level_image)
        return self._mesh_level

    @property
    def mesh_rms(self) -> np.ndarray:
        if self._mesh_rms is None:
            self._mesh_rms = self._nodes(self.rms_image)
        return self._mesh_rms

    def _operators(self) -> tuple[np.ndarray, np.ndarray]:
        """``(Y, X)`` of :func:`spline_matrix` for this model's image (made once)."""
        if self._ops is None:
            box = self.config.box_size_pix
            ny, nx = self.shape
            n_y = -(-ny // box)
            # With one row of boxes sep takes the (zero) curvatures along y for those along x: linear in x.
            self._ops = (spline_matrix(ny, box, n_y, axis="y"),
                         spline_matrix(nx, box, -(-nx // box), axis="x", linear=n_y == 1))
        return self._ops

    def _evaluate(self, mesh: np.ndarray) -> np.ndarray:
        """The full-resolution plane of a node mesh (sep's bicubic spline)."""
        ay, ax = self._operators()
        # The last product in float32: a float64 plane would double the memory for 1e-4 ADU.
        return (ay @ np.asarray(mesh, float)).astype(np.float32) @ ax.T.astype(np.float32)

    def binned_level(self, factor: int) -> np.ndarray:
        """The sky level averaged over ``factor x factor`` pixel blocks (ADU, float32).

        Block ``[j, i]`` covers pixels ``[j factor, (j + 1) factor)`` on each
        axis; an edge block averages the pixels it holds. The spline operators
        are averaged rather than the plane (the plane is linear in them), so no
        image-sized plane is made: a preview of the background costs a few MB.
        A model read from an old file with its planes averages its plane.
        """
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        if self._level is not None:
            return _block_mean(self._level, factor)
        ay, ax = self._operators()
        by, bx = _block_mean_rows(ay, factor), _block_mean_rows(ax, factor)
        return (by @ np.asarray(self.mesh_level, float) @ bx.T).astype(np.float32)

    def _sample_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows and columns (about eight per box) on which the nodes are solved for."""
        step = max(1, self.config.box_size_pix // 8)
        return np.arange(0, self.shape[0], step), np.arange(0, self.shape[1], step)

    def _nodes(self, plane: np.ndarray) -> np.ndarray:
        """The node mesh that ``plane`` interpolates (exact: the plane is ``Ay mesh Ax^T``)."""
        rows, cols = self._sample_grid()
        return self._nodes_from_samples(np.asarray(plane[np.ix_(rows, cols)], float))

    def _nodes_from_samples(self, sub: np.ndarray) -> np.ndarray:
        """Least squares on the :meth:`_sample_grid` values: the cost does not depend on the image size."""
        along_y, along_x = self._solvers()
        return along_x(along_y(sub).T).T.astype(np.float32)

    def _solvers(self) -> tuple[LeastSquares, LeastSquares]:
        """Least-squares solvers of the operators on the sample grid, made once per model
        (asked for four times a run)."""
        if getattr(self, "_solve", None) is None:  # (models pickled before it existed lack it)
            ay, ax = self._operators()
            rows, cols = self._sample_grid()
            self._solve = (LeastSquares(ay[rows]), LeastSquares(ax[cols]))
        return self._solve

    def subtract_from(self, image: np.ndarray) -> None:
        """Subtract the level from ``image`` (float32, ``[y, x]``) in place, without a temporary plane."""
        if self._sep is not None and image.dtype == np.float32 and image.flags.c_contiguous:
            grid = np.ix_(*self._sample_grid()) if self._mesh_level is None else None
            before = image[grid].astype(float) if grid is not None else None
            self._sep.subfrom(image)
            if self.offset_adu:
                image -= np.float32(self.offset_adu)
            if grid is not None:
                # The level on the sample grid is what was subtracted there: the nodes
                # without evaluating a full plane (to float32 rounding of the pixels).
                level = before - image[grid]
                if np.isfinite(level).all():
                    self._mesh_level = self._nodes_from_samples(level)
        else:
            image -= self.level_image

    def add_offset(self, offset_adu: float) -> None:
        """Raise the whole model by ``offset_adu`` (the image it was subtracted from is not changed)."""
        offset = float(offset_adu)
        self.global_level_adu += offset
        if self._sep is not None:
            self.offset_adu += offset
        elif self._level is not None:
            self._level = self._level + np.float32(offset)
        if self._mesh_level is not None:  # a mesh-only model's level follows from it
            self._mesh_level = self._mesh_level + np.float32(offset)

    def add_to(self, image: np.ndarray) -> None:
        """Add the level back to ``image`` in place (the inverse of :meth:`subtract_from`)."""
        if self._sep is not None and image.dtype == np.float32 and image.flags.c_contiguous:
            # -((-image) - level): the same sum to float32 rounding, without an image-sized level plane.
            np.negative(image, out=image)
            self.subtract_from(image)
            np.negative(image, out=image)
        else:
            image += self.level_image

    def evaluate(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Full-resolution sky level (ADU), a copy of :attr:`level_image`.

        Parameters
        ----------
        shape : tuple of int, optional
            ``(ny, nx)`` expected by the caller; checked against the model.

        Raises
        ------
        ValueError
            When ``shape`` differs from the shape the model was fitted on.
        """
        if shape is not None and tuple(shape) != self.shape:
            raise ValueError(f"background model is {self.shape}, asked for {tuple(shape)}")
        return self.level_image.copy() if self._level is not None else self.level_image

    def to_hdulist(self) -> fits.HDUList:
        """FITS form (``calexpBackground.fits``), LSST's binned form of the model.

        HDUs: PRIMARY (no data; config, image size and global figures as
        cards), ``MESH_LEVEL`` and ``MESH_RMS`` (the spline nodes, ADU,
        float32; see :attr:`mesh_level` for where they lie). The full planes
        follow from them (:meth:`from_hdulist`, or :func:`spline_matrix` for
        a reader of its own): storing them would cost two image-sized planes.
        """
        primary = fits.PrimaryHDU()
        hdr = primary.header
        hdr["BKGBOX"] = (self.config.box_size_pix, "[pix] background box side")
        hdr["BKGFILT"] = (self.config.filter_size_boxes, "[boxes] median filter size")
        hdr["BKGFTHR"] = (self.config.filter_threshold, "[adu] median filter threshold")
        hdr["BKGMASK"] = (",".join(self.config.mask_planes), "mask planes ignored")
        hdr["BKGLEVEL"] = (self.global_level_adu, "[adu] global (median box) sky level")
        hdr["BKGRMS"] = (self.global_rms_adu, "[adu] global (median box) sky rms")
        hdr["BKGOFFS"] = (self.offset_adu, "[adu] mean-sky correction added")
        hdr["BKGNX"] = (self.shape[1], "[pix] width of the fitted image")
        hdr["BKGNY"] = (self.shape[0], "[pix] height of the fitted image")
        hdr["BKGINTRP"] = ("SEP-SPLINE", "SExtractor bicubic spline of the nodes")
        hdr["COMMENT"] = "Sky background (sep/SExtractor): the spline of MESH_LEVEL was subtracted."
        hdr["COMMENT"] = "Node (j, i) of the mesh lies at y = (j + 0.5) BKGBOX, x = (i + 0.5) BKGBOX - 0.5"
        hdr["COMMENT"] = "(0-based pixels); cubic spline along y, then along x, with SExtractor's"
        hdr["COMMENT"] = "curvatures: calibration.background.spline_matrix rebuilds the planes."
        hdus = [primary]
        for name, data, what in (
            ("MESH_LEVEL", self.mesh_level, "sky level at the spline nodes"),
            ("MESH_RMS", self.mesh_rms, "sky rms at the spline nodes"),
        ):
            hdu = fits.ImageHDU(np.asarray(data, np.float32), name=name)
            hdu.header["BUNIT"] = "adu"
            hdu.header["BKGBOX"] = (self.config.box_size_pix, "[pix] background box side")
            hdu.header["COMMENT"] = what
            hdus.append(hdu)
        return fits.HDUList(hdus)

    @classmethod
    def from_hdulist(cls, hdulist: fits.HDUList) -> "BackgroundModel":
        """Rebuild a model written by :meth:`to_hdulist`.

        Raises
        ------
        BadExposureError
            When an HDU or card is missing (not a background file).
        """
        try:
            hdr = hdulist[0].header
            raw: dict[str, Any] = {field: hdr[card] for field, card in _CONFIG_CARDS.items()}
            arrays = {name: _native(hdulist[name].data) for name in ("MESH_LEVEL", "MESH_RMS")}
            # Files of earlier versions also hold the full planes: read them as they are.
            full = "LEVEL" in hdulist and "RMS" in hdulist
            for name in ("LEVEL", "RMS"):
                arrays[name] = _native(hdulist[name].data) if full else None
            shape = (int(hdr["BKGNY"]), int(hdr["BKGNX"]))
            level, rms = float(hdr["BKGLEVEL"]), float(hdr["BKGRMS"])
        except KeyError as exc:
            raise BadExposureError(
                f"not a background file written by CalibWeb: missing {exc}",
                stage="background",
            ) from exc
        planes = str(raw["mask_planes"])
        raw["mask_planes"] = [p for p in planes.split(",") if p]
        config = config_from_dict(BackgroundConfig, raw, path="background")
        box = config.box_size_pix
        nodes = (-(-shape[0] // box), -(-shape[1] // box))
        for name in ("MESH_LEVEL", "MESH_RMS"):
            if arrays[name].shape != nodes:
                raise BadExposureError(
                    f"{name} is {arrays[name].shape} but a {shape[1]} x {shape[0]} image in boxes of {box} pix "
                    f"has {nodes} nodes: the background file is damaged",
                    stage="background", mesh_shape=arrays[name].shape, expected_shape=nodes,
                )
        return cls(
            level_image=arrays["LEVEL"],
            rms_image=arrays["RMS"],
            mesh_level=arrays["MESH_LEVEL"],
            mesh_rms=arrays["MESH_RMS"],
            global_level_adu=level,
            global_rms_adu=rms,
            config=config,
            shape=shape,
        )


def estimate_background(
    exposure: Exposure, config: BackgroundConfig | None = None, *, extra_mask: np.ndarray | None = None
) -> BackgroundModel:
    """Estimate the sky background of ``exposure.image`` with sep.

    Parameters
    ----------
    exposure : Exposure
        The exposure; its image (ADU, ``[y, x]``) is not modified.
    config : BackgroundConfig, optional
        Box size, filter and ignored mask planes (defaults if None).
    extra_mask : ndarray of bool, optional
        More pixels to ignore (shape of the image), e.g. grown footprints.

    Returns
    -------
    BackgroundModel
        Level and rms images, box mesh, global figures and config.

    Raises
    ------
    ConfigError
        When the config is invalid.
    BadExposureError
        When the image is smaller than one box, every pixel is masked, or the
        unmasked pixels have no noise (a constant image).
    """
    config = config or BackgroundConfig()
    _validate(config)
    ny, nx = exposure.shape
    box = config.box_size_pix
    if ny < box or nx < box:
        raise BadExposureError(
            f"image of {nx} x {ny} pix is smaller than one background box of {box} pix: "
            f"use a smaller box_size_pix (at most {min(nx, ny)})",
            stage="background",
            image_shape=(ny, nx),
            box_size_pix=box,
        )
    masked = planes_set(exposure.mask, plane_bits(config.mask_planes))
    if extra_mask is not None:
        masked |= extra_mask
    n_good = int(masked.size - np.count_nonzero(masked))
    if n_good == 0:
        raise BadExposureError(
            f"every pixel is masked in one of {', '.join(config.mask_planes)}: "
            "no sky left to estimate the background",
            stage="background",
            n_pixels=int(masked.size),
            mask_planes=list(config.mask_planes),
        )
    data = _native(exposure.image)
    _refuse_constant(data, masked, n_good)
    try:
        bkg = sep.Background(
            data,
            mask=masked,
            bw=box,
            bh=box,
            fw=config.filter_size_boxes,
            fh=config.filter_size_boxes,
            fthresh=config.filter_threshold,
        )
    except Exception as exc:  # sep raises plain Exception for its C errors
        raise BadExposureError(
            f"sep could not estimate the background: {exc}",
            stage="background",
            image_shape=(ny, nx),
            box_size_pix=box,
        ) from exc
    del masked
    model = BackgroundModel(
        global_level_adu=float(bkg.globalback),
        global_rms_adu=float(bkg.globalrms),
        config=config,
        sep_background=bkg,
        shape=(ny, nx),
    )
    # The rms nodes now, while one transient plane costs least: asked for later (detection's
    # noise figure, the file) they would add an image-sized plane to a higher peak. The
    # level's come from the subtraction (BackgroundModel.subtract_from).
    model.mesh_rms  # noqa: B018 (a cached property)
    if not model.global_rms_adu > 0 and not np.any(model.mesh_rms > 0):
        raise BadExposureError(
            "constant image, no noise: cannot set a detection threshold "
            "(the sky rms is zero in every box)",
            stage="background",
            level_adu=float(bkg.globalback),
            n_good_pixels=n_good,
        )
    return model


def subtract_background(exposure: Exposure, model: BackgroundModel) -> None:
    """Subtract ``model`` from ``exposure.image`` in place (variance unchanged).

    Raises
    ------
    BadExposureError
        When the model was fitted to an image of another shape.
    """
    if model.shape != exposure.shape:
        raise BadExposureError(
            f"background model is {model.shape} but the image is {exposure.shape}",
            stage="background",
            model_shape=model.shape,
            image_shape=exposure.shape,
        )
    model.subtract_from(exposure.image)


def _validate(config: BackgroundConfig) -> None:
    try:
        config.validate()
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"background: {exc}", stage="background") from exc


def spline_matrix(n_pix: int, box: int, n_nodes: int, *, axis: str, linear: bool = False) -> np.ndarray:
    """sep's background interpolation along one axis as a ``(n_pix, n_nodes)`` matrix.

    The plane of a node mesh ``M`` is ``Y @ M @ X.T`` with
    ``Y = spline_matrix(ny, box, M.shape[0], axis="y")`` and ``X`` likewise:
    sep (like SExtractor) interpolates along y, then along x, each time with
    a cubic spline through the nodes, continued by its end pieces beyond the
    first and last node; one node gives a constant. Nodes lie at
    ``(k + 0.5) box`` along y and ``(k + 0.5) box - 0.5`` along x. The
    spline's second derivatives are SExtractor's (:func:`_sep_curvatures`),
    which differ from a textbook natural spline's by up to a few 0.1 ADU on a
    real sky, so a textbook spline would not give the subtracted plane back.
    ``linear``: zero curvatures, i.e. linear between the nodes, as sep
    interpolates along x when there is a single row of boxes.
    """
    if n_nodes == 1:
        return np.ones((n_pix, 1))
    pos = np.arange(n_pix, dtype=float)
    u = pos / box - 0.5 if axis == "y" else (pos + 0.5) / box - 0.5  # in node units
    k = np.clip(np.floor(u).astype(np.int64), 0, n_nodes - 2)
    d = u - k
    c = 1.0 - d
    curv = np.zeros((n_nodes, n_nodes)) if linear else _sep_curvatures(n_nodes)
    out = np.zeros((n_pix, n_nodes))
    rows = np.arange(n_pix)
    out[rows, k] += c
    out[rows, k + 1] += d
    out += (c**3 - c)[:, None] * curv[k] + (d**3 - d)[:, None] * curv[k + 1]
    return out


def _sep_curvatures(n: int) -> np.ndarray:
    """``(n, n)``: the node "second derivatives" sep's spline uses, as a linear map of the node values.

    SExtractor's back-substitution divides by 6 at every step, also the value
    it carries to the next one (``d[k] = (d[k] d[k+1] + u[k]) / 6`` where a
    textbook natural spline has ``6 d[k] = d[k] (6 d[k+1]) + u[k]``); the
    map is reproduced as it is.
    """
    values = np.eye(n)
    d = np.zeros((n, n))
    u = np.zeros((n, n))
    for i in range(1, n - 1):
        t = -1.0 / (d[i - 1, 0] + 4.0)  # the same for every column
        d[i] = t
        u[i] = t * (u[i - 1] - 6.0 * (values[i + 1] + values[i - 1] - 2.0 * values[i]))
    d[n - 1] = 0.0
    for i in range(n - 2, -1, -1):
        d[i] = (d[i] * d[i + 1] + u[i]) / 6.0
    return d


def _native(array: np.ndarray) -> np.ndarray:
    """Native-endian, C-contiguous float32 view or copy (what sep accepts)."""
    arr = np.asarray(array)
    return np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("="), copy=False), dtype=np.float32)


def _refuse_constant(data: np.ndarray, masked: np.ndarray, n_good: int) -> None:
    """Raise BadExposureError when every unmasked pixel has the same value."""
    sample, sample_masked = data[::16, ::16], masked[::16, ::16]
    sample = sample[~sample_masked]
    if sample.size and sample.min() != sample.max():
        return  # a sparse grid already shows two values
    low, high = _unmasked_range(data, masked)
    if low == high:
        raise BadExposureError(
            f"constant image, no noise: cannot set a detection threshold "
            f"(every unmasked pixel is {low} ADU)",
            stage="background",
            level_adu=low,
            n_good_pixels=n_good,
        )


def _unmasked_range(data: np.ndarray, masked: np.ndarray) -> tuple[float, float]:
    """Smallest and largest unmasked value, in blocks of rows (no copy of the pixels)."""
    low, high = np.inf, -np.inf
    for start in range(0, data.shape[0], 512):
        rows = slice(start, start + 512)
        good = ~masked[rows]
        if good.any():
            values = data[rows][good]
            low, high = min(low, float(values.min())), max(high, float(values.max()))
    return low, high
