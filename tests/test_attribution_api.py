"""The method classes' API: one module per method, ``baselines`` (Captum's name) and its deprecated
alias ``baseline``, typed keyword arguments, ``check_params`` without side effects, no import cycles."""
from __future__ import annotations

import ast
import copy
import inspect
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ecgray.attribution import METHODS, attribute
from ecgray.attribution.deeplift import DeepLift, _deeplift_canonical
from ecgray.attribution.gradient_shap import GradientShap
from ecgray.attribution.input_x_gradient import InputXGradient
from ecgray.attribution.integrated_gradients import IntegratedGradients
from ecgray.attribution.saliency import Saliency
from tests.conftest import ATTR_N_SAMPLES as N_SAMPLES, ecg_batch

CAPTUM_FAMILY = (IntegratedGradients, Saliency, InputXGradient, DeepLift, GradientShap)
PKG = Path(__file__).resolve().parents[1] / "ecgray" / "attribution"


@pytest.fixture(scope="module")
def x():
    return ecg_batch(2)


def _base():
    return 0.05 * np.ones((12, N_SAMPLES), dtype=np.float32)


def _equal(a, b):
    np.testing.assert_array_equal(a.relevance, b.relevance)
    if a.delta is None:
        assert b.delta is None
    else:
        np.testing.assert_array_equal(a.delta, b.delta)
    assert a.params == b.params


# --------------------------------------------------------------------------- the name
def test_baselines_is_the_name_everywhere():
    for cls in (IntegratedGradients, DeepLift, GradientShap):
        assert "baselines" in cls.defaults and "baseline" not in cls.defaults, cls.name
        assert cls.accepts("baselines")
    for cls in (IntegratedGradients, DeepLift):
        assert cls.deprecated_params == {"baseline": "baselines"} and cls.accepts("baseline")
    assert not GradientShap.accepts("baseline")  # never had the singular name


@pytest.mark.parametrize("method,multi_target", [("ig", "auto"), ("ig", "rows"), ("deeplift", "rows")])
def test_deprecated_baseline_alias_warns_and_is_bit_equal(model, x, method, multi_target):
    kw = dict(targets=["AF", "SB"], method=method, multi_target=multi_target, batch_size=2)
    if method == "ig":
        kw["n_steps"] = 4
    with warnings.catch_warnings(record=True) as quiet:
        warnings.simplefilter("always")
        new = attribute(model, x, baselines=_base(), **kw)
    assert not [w for w in quiet if "deprecated" in str(w.message) and "baseline" in str(w.message)]
    with pytest.warns(DeprecationWarning, match="'baseline' is deprecated, use 'baselines'") as rec:
        old = attribute(model, x, baseline=_base(), **kw)
    ours = [w for w in rec if "'baseline' is deprecated" in str(w.message)]
    assert len(ours) == 1 and ours[0].filename == __file__  # it points at the caller's attribute(...)
    _equal(new, old)
    assert "baselines" in new.params and "baseline" not in new.params
    assert new.params["baselines"].startswith("array(shape=[12, 1024]")
    # and the baseline is used: the zero-baseline result differs
    zero = attribute(model, x, **kw)
    assert zero.params["baselines"] == "zeros" and not np.array_equal(zero.relevance, new.relevance)


def test_baselines_reach_captum_unchanged(model, x):
    """The rows paths are Captum itself: with ``baselines`` they equal Captum's result bit for bit."""
    from captum.attr import DeepLift as CaptumDeepLift
    from captum.attr import IntegratedGradients as CaptumIG

    xt = torch.as_tensor(x[:1])
    base = torch.as_tensor(_base())[None]
    ig = attribute(model, x[:1], targets=["AF"], method="ig", n_steps=4, baselines=_base(), multi_target="rows",
                   internal_batch_size=4)
    dl = attribute(model, x[:1], targets=["AF"], method="deeplift", baselines=_base())
    t = model.classes.index("AF")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_ig = CaptumIG(model, multiply_by_inputs=True).attribute(
            xt.clone().requires_grad_(True), baselines=base, target=t, n_steps=4, internal_batch_size=4)
        net = _deeplift_canonical(model)
        ref_dl = CaptumDeepLift(net, multiply_by_inputs=True, eps=1e-10).attribute(
            xt.clone().requires_grad_(True), baselines=base, target=t)
    np.testing.assert_array_equal(ig.relevance[:, 0], ref_ig.detach().numpy())
    np.testing.assert_array_equal(dl.relevance[:, 0], ref_dl.detach().numpy())


def test_both_names_is_an_error(model, x):
    with pytest.raises(TypeError, match="both 'baselines' and its deprecated alias 'baseline'"):
        attribute(model, x[:1], method="ig", n_steps=2, baselines=0.0, baseline=0.0)


def test_cli_routes_the_deprecated_name():
    """``-p baseline=...`` reaches the methods that take it (IG, DeepLift), as it did before."""
    from ecgray.cli import _method_params

    methods = ["integrated_gradients", "deeplift", "gradient_shap"]
    assert _method_params(methods, {"baseline": 0.1}) == {
        "integrated_gradients": {"baseline": 0.1}, "deeplift": {"baseline": 0.1}, "gradient_shap": {}}
    assert _method_params(methods, {"ig.baseline": 0.1})["integrated_gradients"] == {"baseline": 0.1}
    routed = _method_params(methods, {"baselines": 0.1})
    assert all(routed[m] == {"baselines": 0.1} for m in methods)
    with pytest.warns(DeprecationWarning):
        eff = IntegratedGradients.resolve_params({"baseline": 0.1})
    assert eff == IntegratedGradients.resolve_params({"baselines": 0.1})


# --------------------------------------------------------------------------- check_params
def test_check_params_does_not_mutate_its_argument():
    arr = np.zeros((2, 12, N_SAMPLES), dtype=np.float32)
    given = {"baselines": None, "baseline_stdev": None}
    gs = dict(GradientShap.defaults, **given)
    snapshot = dict(gs)
    out = GradientShap.check_params(gs)
    assert gs == snapshot and gs["baseline_stdev"] is None  # the caller's dict is untouched
    assert out is not gs and out["baseline_stdev"] == 0.01
    gs2 = dict(GradientShap.defaults, baselines=arr)
    out2 = GradientShap.check_params(gs2)
    assert gs2["baseline_stdev"] is None and out2["baseline_stdev"] == 0.0 and out2["baselines"] is arr
    for cls in METHODS.values():  # every method, LRP included: check_params leaves its argument alone
        p = dict(cls.defaults)
        before = copy.deepcopy(p)
        res = cls.check_params(p)
        assert p == before, cls.name
        if cls in CAPTUM_FAMILY:
            assert isinstance(res, dict) and res is not p, cls.name


def test_resolve_params_leaves_the_callers_dict_alone():
    user = {"baseline": 0.5, "n_steps": 3}
    with pytest.warns(DeprecationWarning):
        eff = IntegratedGradients.resolve_params(user)
    assert user == {"baseline": 0.5, "n_steps": 3}
    assert eff["baselines"] == 0.5 and eff["n_steps"] == 3 and "baseline" not in eff
    gs_user = {"n_samples": 2}
    eff = GradientShap.resolve_params(gs_user)
    assert gs_user == {"n_samples": 2} and eff["baseline_stdev"] == 0.01
    assert GradientShap.resolve_params(eff) == eff  # idempotent


# --------------------------------------------------------------------------- typed keyword arguments
def test_parameters_are_the_typed_keywords_of_init():
    for cls in CAPTUM_FAMILY:
        sig = inspect.signature(cls.__init__)
        kw = {n: p for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY and n != "seed"}
        assert {n: p.default for n, p in kw.items()} == cls.defaults, cls.name
        assert all(p.annotation is not inspect.Parameter.empty for p in kw.values()), cls.name
        assert cls.__doc__ and "R_i" in cls.__doc__, cls.name  # the docstring states the definition


def test_keywords_or_mapping_same_method(model):
    a = IntegratedGradients(model, n_steps=4, baselines=0.1)
    b = IntegratedGradients(model, {"n_steps": 4, "baselines": 0.1})
    assert a.params == b.params == IntegratedGradients.resolve_params({"n_steps": 4, "baselines": 0.1})
    assert Saliency(model, abs=False).params == {"abs": False}
    assert GradientShap(model, n_samples=3, seed=5).params["baseline_stdev"] == 0.01
    with pytest.raises(TypeError, match="not both"):
        IntegratedGradients(model, {"n_steps": 4}, n_steps=8)
    with pytest.raises(TypeError):
        IntegratedGradients(model, n_step=4)  # a typo is an error, not a silent default
    with pytest.raises(TypeError, match="unexpected parameter"):
        InputXGradient(model, {"abs": True})
    with pytest.raises(ValueError, match="n_steps"):
        IntegratedGradients(model, n_steps=0)


# --------------------------------------------------------------------------- layout
def test_no_import_cycles_in_the_package():
    """Module-level imports between ecgray.attribution modules form no cycle."""
    mods = {p.stem: p for p in PKG.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.parse(path.read_text()).body:  # module level only: lazy imports are fine
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module.startswith("ecgray.attribution."):
                    deps.add(node.module.split(".")[2])
                elif node.module == "ecgray.attribution":
                    deps.update(a.name for a in node.names if a.name in mods)
        graph[name] = deps - {name}
    state: dict[str, int] = {}

    def visit(n, stack):
        state[n] = 1
        for d in graph.get(n, ()):
            assert state.get(d) != 1, f"import cycle: {' -> '.join(stack + [n, d])}"
            if d not in state:
                visit(d, stack + [n])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [])
    assert "base" in graph and not graph["base"] - {"fast"}  # base imports no method module


def test_cli_deprecated_baseline_gives_the_same_relevance(cpsc_dir, tiny_model, tmp_path):
    """``ecgray explain -p baseline=...`` (deprecated) writes what ``-p baselines=...`` writes."""
    import polars as pl
    from typer.testing import CliRunner

    from ecgray.cli import app
    from ecgray.models import save_model

    weights = tmp_path / "tiny.safetensors"
    save_model(tiny_model, weights)
    frames = {}
    for key in ("baselines", "baseline"):
        out = tmp_path / f"{key}.parquet"
        res = CliRunner().invoke(app, ["explain", str(cpsc_dir / "A0001"), "--model", str(weights),
                                       "--method", "ig,deeplift", "-p", f"{key}=0.1", "-p", "n_steps=2",
                                       "-t", "AF", "-o", str(out)])
        assert res.exit_code == 0, res.output
        frames[key] = pl.read_parquet(out)
    assert frames["baselines"].height > 0
    assert frames["baselines"]["relevance"].to_list() == frames["baseline"]["relevance"].to_list()
