"""The detection fields of the wire contract (issue 28): FitOptions' support fraction, cell
robustness and "auto" K; the Model's outlier map, cell screen and robust-fit fields; old messages
(without them) still decoding, and half a map refused."""
import math

import numpy as np
import pytest

from l1pca.kernels import InputError, Model
from l1pca.kernels.fitting import fit_many
from l1pca.kernels.options import DEFAULT_SUPPORT_FRACTION
from l1pca.kernels.scoring import GROUPS
from l1pca.proto import wire
from l1pca.v1 import l1pca_pb2 as pb

NEW_FIELDS = ("score_scales", "sd_cutoff", "od_cutoff", "score_cutoff", "cell_center", "cell_scale",
              "residual_scale", "support_fraction", "cell_robust", "n_csteps")


def _fitted(**kwargs):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2)) @ rng.normal(size=(2, 5)) + 0.1 * rng.normal(size=(60, 5))
    X[:3] += 8.0
    return fit_many([X], 2, seeds=[1], backend="numpy", **kwargs)[0], X


def _same(a: Model, b: Model):
    for field in ("components", "center", "threshold", "method", "objective", "n_samples",
                  "backend", "n_flips", "converged", *NEW_FIELDS):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


@pytest.mark.parametrize("kwargs", [{}, {"support_fraction": None, "cell_robust": False},
                                    {"support_fraction": 0.6, "contamination": 0.1}])
def test_a_fitted_model_round_trips_every_field(kwargs):
    model, X = _fitted(**kwargs)
    msg = pb.Model.FromString(wire.encode_model(model).SerializeToString())
    back = wire.decode_model(msg)
    _same(back, model)
    assert back.has_outlier_map
    np.testing.assert_array_equal(back.outlier_scores(X), model.outlier_scores(X))
    np.testing.assert_array_equal(back.score_entries(X), model.score_entries(X))
    assert msg.score_scales.rows == 1 and msg.score_scales.cols == model.n_components
    assert msg.residual_scale.cols == model.n_features


def test_an_old_model_message_decodes_without_the_map():
    model, X = _fitted()
    old = pb.Model()
    old.CopyFrom(wire.encode_model(model))
    for field in NEW_FIELDS:
        old.ClearField(field)
    back = wire.decode_model(old)
    assert not back.has_outlier_map and back.score_scales is None and back.residual_scale is None
    assert math.isnan(back.sd_cutoff) and back.score_cutoff == 1.0 and back.n_csteps == 0
    # It scores the way such models did: the distance from the subspace against the threshold.
    np.testing.assert_array_equal(back.predict(X) == -1, back.score_samples(X) > back.threshold)


@pytest.mark.parametrize("clear,match", [
    (("sd_cutoff",), "part of the outlier map"),
    (("score_scales",), "part of the outlier map"),
])
def test_half_a_map_is_refused(clear, match):
    msg = wire.encode_model(_fitted()[0])
    for field in clear:
        msg.ClearField(field)
    with pytest.raises(wire.WireError, match=match):
        wire.decode_model(msg)


def test_bad_model_fields_are_named():
    model = _fitted()[0]
    msg = wire.encode_model(model)
    msg.score_scales.CopyFrom(wire.encode_matrix(np.ones((1, 3))))
    with pytest.raises(wire.WireError, match=r"model.score_scales has shape \(1, 3\); this model "
                                             r"needs \(1, 2\)"):
        wire.decode_model(msg)
    msg = wire.encode_model(model)
    msg.residual_scale.CopyFrom(wire.encode_matrix(np.zeros((1, 5))))
    with pytest.raises(wire.WireError, match="model.residual_scale holds a scale <= 0"):
        wire.decode_model(msg)
    msg = wire.encode_model(model)
    msg.od_cutoff = float("inf")
    with pytest.raises(wire.WireError, match="model.od_cutoff=inf must be a finite number"):
        wire.decode_model(msg)
    msg = wire.encode_model(model)
    msg.support_fraction = 0.2
    with pytest.raises(wire.WireError, match=r"model.support_fraction=0.2 must be None or a number "
                                             r"in \[0.5, 1\]"):
        wire.decode_model(msg)


def test_options_round_trip_and_defaults():
    empty = wire.decode_options(pb.FitOptions())
    assert empty["n_components"] == 1 and empty["cell_robust"] is True
    assert empty["support_fraction"] == DEFAULT_SUPPORT_FRACTION  # absent: the kernels' default
    opts = wire.decode_options(wire.encode_options("auto", support_fraction=None, cell_robust=False))
    assert opts["n_components"] == "auto" and opts["support_fraction"] is None
    assert opts["cell_robust"] is False
    msg = wire.encode_options(3, support_fraction=0.6)
    assert msg.n_components == 3 and not msg.auto_components and msg.support_fraction == 0.6
    assert wire.decode_options(msg)["support_fraction"] == 0.6
    # 1.0 on the wire is the plain fit, as None in the kernels.
    assert wire.decode_options(pb.FitOptions(support_fraction=1.0))["support_fraction"] is None


@pytest.mark.parametrize("msg,match", [
    (pb.FitOptions(support_fraction=0.2),
     r"options.support_fraction=0.2 must be None or a number in \[0.5, 1\]"),
    (pb.FitOptions(support_fraction=float("nan")), "options.support_fraction=nan"),
    (pb.FitOptions(auto_components=True, n_components=3),
     "options.auto_components=true and options.n_components=3: give one"),
])
def test_bad_options_are_refused_in_the_kernels_words(msg, match):
    with pytest.raises(InputError, match=match):
        wire.decode_options(msg)


def test_encode_options_refuses_what_the_kernels_refuse():
    with pytest.raises(InputError, match="support_fraction=0.3"):
        wire.encode_options(2, support_fraction=0.3)
    with pytest.raises(InputError, match="n_components must be a positive integer or 'auto'"):
        wire.encode_options("many")


def test_outlier_group_enum_matches_the_kernels_groups():
    names = [name[len("OUTLIER_GROUP_"):].lower().replace("_", " ") for name in pb.OutlierGroup.keys()]
    assert tuple(names) == GROUPS
    assert [pb.OutlierGroup.Value(n) for n in pb.OutlierGroup.keys()] == list(range(len(GROUPS)))
