"""The ``l1pca.v1.L1PCA`` servicer: decode and check requests, queue fits, encode answers.

Decoding and checks (:mod:`l1pca.proto.wire`, :mod:`l1pca.kernels._validation`) of a fit request
run on the event loop when its matrix is small (tens of microseconds, less than a thread hop) and in
a small thread pool otherwise, since a matrix near the size limit takes milliseconds to check. Fits
go through the :class:`~l1pca.service.batcher.Batcher` to the
:class:`~l1pca.service.executor.FitExecutor`; transforms and scores use the
:class:`l1pca.kernels.Model` functions (the same scoring code as the estimator) in the thread pool.
No solver work runs on the event loop.

Checks raise :class:`l1pca.kernels.InputError` (bad input), which the status interceptor
(:mod:`l1pca.service.errors`) answers with INVALID_ARGUMENT; any other exception is a defect and
becomes INTERNAL, with its traceback logged.
"""
from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

import numpy as np

from l1pca.kernels import InputError, bucket_shape
from l1pca.kernels._validation import check_matrix, check_n_components
from l1pca.kernels.detection import CELL_CUTOFF
from l1pca.proto import wire
from l1pca.v1 import l1pca_pb2 as pb
from l1pca.v1 import l1pca_pb2_grpc as pb_grpc

from .errors import InvalidArgument, Unavailable
from .executor import FitKey

INLINE_BYTES = 64 * 1024
"""Requests whose matrix is smaller than this are decoded and checked on the event loop (tens of
microseconds); larger ones, and every transform and score, go to the thread pool."""


@dataclass(frozen=True)
class Limits:
    max_rows: int
    max_cols: int
    max_n_init: int


@dataclass(frozen=True)
class _FitJob:
    key: FitKey
    X: np.ndarray
    seed: int
    dtype: np.dtype


class L1PCAServicer(pb_grpc.L1PCAServicer):
    """Handlers of the four RPCs.

    Parameters
    ----------
    batcher : Batcher
        Queues fit jobs (key :class:`FitKey`, payload ``(X, seed)``).
    limits : Limits
    executor : concurrent.futures.Executor
        For decoding, checks, transforms and scores.
    info : l1pca_pb2.ServerInfo
    is_ready : callable() -> bool
        False while warming up.
    """

    def __init__(self, *, batcher, limits: Limits, executor, info, is_ready):
        self._batcher = batcher
        self._limits = limits
        self._executor = executor
        self._info = info
        self._is_ready = is_ready

    async def _off_loop(self, fn, *args, size=None):
        """``fn(*args)`` in the executor; inline when the request's matrix is smaller than
        :data:`INLINE_BYTES` (a thread hop then costs more than the work)."""
        self._check_ready()
        if size is not None and size < INLINE_BYTES:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _check_ready(self):
        if not self._is_ready():
            raise Unavailable("the server is warming up (compiling the solver); retry shortly")

    # -- RPCs -----------------------------------------------------------------------------------
    async def Fit(self, request, context):
        job = await self._off_loop(self._prepare_fit, request.x, request.options,
                                   size=len(request.x.data))
        res = await self._fit(job, context)
        return pb.FitResponse(model=wire.encode_model(res))

    async def Transform(self, request, context):
        return await self._off_loop(self._transform, request)

    async def ScoreOutliers(self, request, context):
        source = request.WhichOneof("source")
        if source is None:
            raise InvalidArgument("ScoreOutliers needs either `model` (a model from Fit) or `fit` "
                                  "(FitOptions, to fit on x first)")
        if source == "model":
            return await self._off_loop(self._score, request, None, None)
        job = await self._off_loop(self._prepare_fit, request.x, request.fit, size=len(request.x.data))
        res = await self._fit(job, context)
        return await self._off_loop(self._score, request, res, job)

    async def GetServerInfo(self, request, context):
        return self._info

    # -- steps ----------------------------------------------------------------------------------
    async def _fit(self, job: _FitJob, context):
        return await self._batcher.submit(job.key, (job.X, job.seed),
                                          timeout_s=context.time_remaining())

    def _decode_x(self, msg):
        if not msg.ByteSize():
            raise InvalidArgument("x is missing: send the data matrix (rows = samples)")
        raw = wire.decode_matrix(msg, name="x", max_rows=self._limits.max_rows,
                                 max_cols=self._limits.max_cols)
        return check_matrix(raw, name="x"), raw.dtype

    def _prepare_fit(self, x_msg, options_msg):
        X, dtype = self._decode_x(x_msg)
        opts = wire.decode_options(options_msg, max_n_init=self._limits.max_n_init)
        if opts["n_components"] != "auto":  # "auto" chooses a K that fits the shape
            try:
                check_n_components(opts["n_components"], *X.shape)
            except InputError as exc:
                raise InvalidArgument(f"options.{exc}") from None
        seed = opts["seed"] if opts["seed"] is not None else secrets.randbits(63)
        key = FitKey(method=opts["method"], n_components=opts["n_components"], n_init=opts["n_init"],
                     center=opts["center"], contamination=opts["contamination"],
                     bucket=bucket_shape(*X.shape), support_fraction=opts["support_fraction"],
                     cell_robust=opts["cell_robust"])
        return _FitJob(key=key, X=X, seed=seed, dtype=dtype)

    def _model_for(self, msg, X):
        model = wire.decode_model(msg, max_cols=self._limits.max_cols)
        if X.shape[1] != model.n_features:
            raise InvalidArgument(f"x has {X.shape[1]} columns; the model was fitted on "
                                  f"{model.n_features} features")
        return model

    def _transform(self, request):
        X, dtype = self._decode_x(request.x)
        if not request.HasField("model"):
            raise InvalidArgument("model is missing: send the model that Fit returned")
        model = self._model_for(request.model, X)
        Z = model.transform(X)
        return pb.TransformResponse(projections=wire.encode_matrix(Z.astype(dtype, copy=False)))

    def _score(self, request, fitted, job):
        if fitted is None:
            X, dtype = self._decode_x(request.x)
            model = self._model_for(request.model, X)
            model_msg = request.model
        else:
            X, dtype = job.X, job.dtype
            model = fitted  # fit_many recorded the request's seed in it
            model_msg = wire.encode_model(model)

        def column(values):
            return wire.encode_matrix(np.asarray(values).astype(dtype).reshape(-1, 1))

        out = pb.ScoreOutliersResponse(model=model_msg, cell_cutoff=CELL_CUTOFF)
        if model.has_outlier_map:
            omap = model.outlier_map(X)
            od = omap.od
            out.score_distances.CopyFrom(column(omap.sd))
            out.outlier_scores.CopyFrom(column(omap.score))
            out.groups = np.asarray(omap.group, dtype=np.uint8).tobytes()
            flagged = omap.score > model.score_cutoff  # Model.predict's rule
        else:
            # A model without the outlier map (an older client's): the distance from the subspace
            # and its threshold, the rule such models were scored by; the map's fields stay empty.
            od = model.score_samples(X)
            out.map_missing = True
            flagged = od > model.threshold
        out.sample_scores.CopyFrom(column(od))
        out.outlier_rows.extend(np.flatnonzero(flagged).tolist())
        if request.return_entry_scores:
            cells = model.cells(X)
            out.entry_scores.CopyFrom(wire.encode_matrix(np.abs(cells.z).astype(dtype, copy=False)))
            if model.residual_scale is not None:  # else z is the raw residual: no cutoff applies
                out.cell_flags = np.asarray(cells.flags, dtype=np.uint8).tobytes()
        return out
