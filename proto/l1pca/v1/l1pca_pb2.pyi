from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT64: _ClassVar[DType]

class Method(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METHOD_UNSPECIFIED: _ClassVar[Method]
    METHOD_BITFLIP: _ClassVar[Method]
    METHOD_EXACT: _ClassVar[Method]
    METHOD_L2: _ClassVar[Method]
    METHOD_FIXED_POINT: _ClassVar[Method]
    METHOD_NON_GREEDY: _ClassVar[Method]

class Center(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CENTER_UNSPECIFIED: _ClassVar[Center]
    CENTER_MEDIAN: _ClassVar[Center]
    CENTER_MEAN: _ClassVar[Center]
    CENTER_NONE: _ClassVar[Center]

class OutlierGroup(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTLIER_GROUP_REGULAR: _ClassVar[OutlierGroup]
    OUTLIER_GROUP_GOOD_LEVERAGE: _ClassVar[OutlierGroup]
    OUTLIER_GROUP_ORTHOGONAL_OUTLIER: _ClassVar[OutlierGroup]
    OUTLIER_GROUP_BAD_LEVERAGE: _ClassVar[OutlierGroup]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT64: DType
METHOD_UNSPECIFIED: Method
METHOD_BITFLIP: Method
METHOD_EXACT: Method
METHOD_L2: Method
METHOD_FIXED_POINT: Method
METHOD_NON_GREEDY: Method
CENTER_UNSPECIFIED: Center
CENTER_MEDIAN: Center
CENTER_MEAN: Center
CENTER_NONE: Center
OUTLIER_GROUP_REGULAR: OutlierGroup
OUTLIER_GROUP_GOOD_LEVERAGE: OutlierGroup
OUTLIER_GROUP_ORTHOGONAL_OUTLIER: OutlierGroup
OUTLIER_GROUP_BAD_LEVERAGE: OutlierGroup

class Matrix(_message.Message):
    __slots__ = ("rows", "cols", "dtype", "data")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    rows: int
    cols: int
    dtype: DType
    data: bytes
    def __init__(self, rows: _Optional[int] = ..., cols: _Optional[int] = ..., dtype: _Optional[_Union[DType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class FitOptions(_message.Message):
    __slots__ = ("n_components", "method", "n_init", "center", "seed", "contamination", "support_fraction", "cell_robust", "auto_components")
    N_COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    N_INIT_FIELD_NUMBER: _ClassVar[int]
    CENTER_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CONTAMINATION_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    CELL_ROBUST_FIELD_NUMBER: _ClassVar[int]
    AUTO_COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    n_components: int
    method: Method
    n_init: int
    center: Center
    seed: int
    contamination: float
    support_fraction: float
    cell_robust: bool
    auto_components: bool
    def __init__(self, n_components: _Optional[int] = ..., method: _Optional[_Union[Method, str]] = ..., n_init: _Optional[int] = ..., center: _Optional[_Union[Center, str]] = ..., seed: _Optional[int] = ..., contamination: _Optional[float] = ..., support_fraction: _Optional[float] = ..., cell_robust: _Optional[bool] = ..., auto_components: _Optional[bool] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("components", "center", "threshold", "method", "objective", "n_samples", "n_features", "backend", "n_flips", "converged", "seed", "score_scales", "sd_cutoff", "od_cutoff", "score_cutoff", "cell_center", "cell_scale", "residual_scale", "support_fraction", "cell_robust", "n_csteps")
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    CENTER_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    N_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    N_FEATURES_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    N_FLIPS_FIELD_NUMBER: _ClassVar[int]
    CONVERGED_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SCORE_SCALES_FIELD_NUMBER: _ClassVar[int]
    SD_CUTOFF_FIELD_NUMBER: _ClassVar[int]
    OD_CUTOFF_FIELD_NUMBER: _ClassVar[int]
    SCORE_CUTOFF_FIELD_NUMBER: _ClassVar[int]
    CELL_CENTER_FIELD_NUMBER: _ClassVar[int]
    CELL_SCALE_FIELD_NUMBER: _ClassVar[int]
    RESIDUAL_SCALE_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    CELL_ROBUST_FIELD_NUMBER: _ClassVar[int]
    N_CSTEPS_FIELD_NUMBER: _ClassVar[int]
    components: Matrix
    center: Matrix
    threshold: float
    method: Method
    objective: float
    n_samples: int
    n_features: int
    backend: str
    n_flips: int
    converged: bool
    seed: int
    score_scales: Matrix
    sd_cutoff: float
    od_cutoff: float
    score_cutoff: float
    cell_center: Matrix
    cell_scale: Matrix
    residual_scale: Matrix
    support_fraction: float
    cell_robust: bool
    n_csteps: int
    def __init__(self, components: _Optional[_Union[Matrix, _Mapping]] = ..., center: _Optional[_Union[Matrix, _Mapping]] = ..., threshold: _Optional[float] = ..., method: _Optional[_Union[Method, str]] = ..., objective: _Optional[float] = ..., n_samples: _Optional[int] = ..., n_features: _Optional[int] = ..., backend: _Optional[str] = ..., n_flips: _Optional[int] = ..., converged: _Optional[bool] = ..., seed: _Optional[int] = ..., score_scales: _Optional[_Union[Matrix, _Mapping]] = ..., sd_cutoff: _Optional[float] = ..., od_cutoff: _Optional[float] = ..., score_cutoff: _Optional[float] = ..., cell_center: _Optional[_Union[Matrix, _Mapping]] = ..., cell_scale: _Optional[_Union[Matrix, _Mapping]] = ..., residual_scale: _Optional[_Union[Matrix, _Mapping]] = ..., support_fraction: _Optional[float] = ..., cell_robust: _Optional[bool] = ..., n_csteps: _Optional[int] = ...) -> None: ...

class FitRequest(_message.Message):
    __slots__ = ("x", "options")
    X_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    x: Matrix
    options: FitOptions
    def __init__(self, x: _Optional[_Union[Matrix, _Mapping]] = ..., options: _Optional[_Union[FitOptions, _Mapping]] = ...) -> None: ...

class FitResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class TransformRequest(_message.Message):
    __slots__ = ("model", "x")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    model: Model
    x: Matrix
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ..., x: _Optional[_Union[Matrix, _Mapping]] = ...) -> None: ...

class TransformResponse(_message.Message):
    __slots__ = ("projections",)
    PROJECTIONS_FIELD_NUMBER: _ClassVar[int]
    projections: Matrix
    def __init__(self, projections: _Optional[_Union[Matrix, _Mapping]] = ...) -> None: ...

class ScoreOutliersRequest(_message.Message):
    __slots__ = ("model", "fit", "x", "return_entry_scores")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FIT_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    RETURN_ENTRY_SCORES_FIELD_NUMBER: _ClassVar[int]
    model: Model
    fit: FitOptions
    x: Matrix
    return_entry_scores: bool
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ..., fit: _Optional[_Union[FitOptions, _Mapping]] = ..., x: _Optional[_Union[Matrix, _Mapping]] = ..., return_entry_scores: _Optional[bool] = ...) -> None: ...

class ScoreOutliersResponse(_message.Message):
    __slots__ = ("sample_scores", "outlier_rows", "entry_scores", "model", "score_distances", "groups", "outlier_scores", "cell_flags", "cell_cutoff", "map_missing")
    SAMPLE_SCORES_FIELD_NUMBER: _ClassVar[int]
    OUTLIER_ROWS_FIELD_NUMBER: _ClassVar[int]
    ENTRY_SCORES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_DISTANCES_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    OUTLIER_SCORES_FIELD_NUMBER: _ClassVar[int]
    CELL_FLAGS_FIELD_NUMBER: _ClassVar[int]
    CELL_CUTOFF_FIELD_NUMBER: _ClassVar[int]
    MAP_MISSING_FIELD_NUMBER: _ClassVar[int]
    sample_scores: Matrix
    outlier_rows: _containers.RepeatedScalarFieldContainer[int]
    entry_scores: Matrix
    model: Model
    score_distances: Matrix
    groups: bytes
    outlier_scores: Matrix
    cell_flags: bytes
    cell_cutoff: float
    map_missing: bool
    def __init__(self, sample_scores: _Optional[_Union[Matrix, _Mapping]] = ..., outlier_rows: _Optional[_Iterable[int]] = ..., entry_scores: _Optional[_Union[Matrix, _Mapping]] = ..., model: _Optional[_Union[Model, _Mapping]] = ..., score_distances: _Optional[_Union[Matrix, _Mapping]] = ..., groups: _Optional[bytes] = ..., outlier_scores: _Optional[_Union[Matrix, _Mapping]] = ..., cell_flags: _Optional[bytes] = ..., cell_cutoff: _Optional[float] = ..., map_missing: _Optional[bool] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("version", "backend", "device", "max_rows", "max_cols", "max_request_bytes", "max_n_init", "max_batch_size", "methods")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    MAX_COLS_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_N_INIT_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    version: str
    backend: str
    device: str
    max_rows: int
    max_cols: int
    max_request_bytes: int
    max_n_init: int
    max_batch_size: int
    methods: _containers.RepeatedScalarFieldContainer[Method]
    def __init__(self, version: _Optional[str] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., max_rows: _Optional[int] = ..., max_cols: _Optional[int] = ..., max_request_bytes: _Optional[int] = ..., max_n_init: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., methods: _Optional[_Iterable[_Union[Method, str]]] = ...) -> None: ...
