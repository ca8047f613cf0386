"""Layer-wise relevance propagation (LRP) for the Ribeiro et al. 2020 ResNet, via Zennit.

Two methods are registered: ``lrp_epsilon`` (alias ``lrp``) and
``lrp_alpha_beta``. Both start from the target's output (the logit, or the
sigmoid probability with ``output="probability"``) as the relevance of that
output and propagate it back to the 12 x L input samples. Zennit is imported
lazily (through :mod:`ecgray.attribution._zennit`), only when one of these
methods runs; LRP always works on a *deep copy* of the model, so the caller's
model is never modified, not even temporarily.

Layout (Zennit's): this module holds the two method classes (no Zennit import);
:mod:`.canonizers` the canonizers, :mod:`.composites` the two composites, each a
layer map -- both import Zennit and are imported when a method is built.

Rules
-----
=========================  ================================  ===================================
layer                      ``lrp_epsilon``                   ``lrp_alpha_beta``
=========================  ================================  ===================================
stem conv (first layer)    epsilon (``first_rule``)          alpha-beta (``first_rule``)
other Conv1d               epsilon                           alpha-beta (alpha=2, beta=1)
Dense (Linear)             epsilon                           epsilon
BN after a conv (stem      folded into the conv              folded into the conv
bn1, each unit's bn1)      (canonizer; BN -> identity)       (canonizer; BN -> identity)
BN after the residual sum  epsilon as an affine layer        epsilon as an affine layer
(each unit's ``bn2``)      (stabiliser epsilon)              (stabiliser epsilon)
residual addition          ``zennit.layer.Sum`` + ``Norm``   ``zennit.layer.Sum`` + ``Norm``
ReLU, Dropout (eval),      pass-through                      pass-through
sigmoid (probability)
skip-path max-pool         gradient (winner-take-all)        gradient (winner-take-all)
=========================  ================================  ===================================

``epsilon`` defaults to ``1e-6`` with ``epsilon_scale="absolute"`` (Zennit's
default): a pure stabiliser, i.e. LRP-0 in the network. Reason: on this ReLU
network LRP-0 with the rules above is *exactly* Gradient x Input (tested to
1e-6 with epsilon 1e-9; with the default 1e-6, within 0.3 % of max |R|),
which makes the method well defined and checkable, and every relevance that
is lost goes to a bias term (reported as delta), not to an arbitrary epsilon.
The flip side: ``lrp_epsilon`` with defaults is (numerically almost) the same
map as ``input_x_gradient``; ``lrp_alpha_beta`` is the LRP variant that
differs. For the sparser,
noise-suppressing "LRP-epsilon" of the literature pass e.g.
``epsilon=0.25, epsilon_scale="rms"``: epsilon is then 0.25 x the RMS of each
layer's pre-activations per record (Zennit ``Stabilizer(norm_scale=True)``),
which is scale-free across layers; relevance absorbed by epsilon then also
shows up in delta.

First layer. The input is a raw ECG in mV: signed, unbounded, with no
natural box, and the isoelectric line (0 mV) is the natural "absence of
signal". Both default first-layer rules give each input sample relevance in
proportion to its contribution ``x_i w_ij`` (epsilon), or to the positive /
negative parts of the contributions (alpha-beta; Zennit's version handles
signed inputs, ``x+ w+ + x- w-`` counting as positive) -- zero where the
signal is zero, consistent with the zero baselines of IG/DeepLift.
``lrp_epsilon`` uses epsilon (``first_rule="epsilon"``), which keeps the whole
network LRP-0 = Gradient x Input. ``lrp_alpha_beta`` uses alpha-beta on the
stem as well (``first_rule="same"``): with epsilon there, the bounded
alpha-beta relevance of layer 1 is re-divided by stem pre-activations near
zero, and the input relevance explodes into large cancelling values (measured
on the reduced test model: median sum |R| ~ 78 x |logit|, against ~ 7 x with
alpha-beta on the stem; LRP-0 / Gradient x Input itself: ~ 73 x). ``Flat``/``WSquare`` ignore the input values, and because every
stem filter spans all 12 leads, ``Flat`` would give all 12 leads *identical*
relevance at each sample (useless for lead-wise explanations); ``ZBox``
needs bounds the data do not have. They remain available as
``first_rule="flat"|"wsquare"|"zbox"`` (``zbox_low``/``zbox_high``, scalars
or one value per lead).

What happens at the BatchNorms
------------------------------
The stem ``conv1 -> bn1`` and each unit's ``conv1 -> bn1`` are folded into the
conv (weight x gamma/sqrt(var+eps), bias beta - mean x gamma/sqrt(var+eps)) by
a canonizer (:class:`~.canonizers.ResNet1dMergeBatchNorm`), as zennit's
``SequentialMergeBatchNorm`` would -- but pairs are found structurally, not by
module order: ``bn2`` normalises the *sum* ``conv2(..) + skip`` and must not
be folded into ``conv2``. (``SequentialMergeBatchNorm`` folds a BN into the
linear layer registered just before it; it left ``bn2`` alone only because the
unit's ``add`` module is registered between ``conv2`` and ``bn2`` -- before
``ResidualAdd`` existed it silently folded ``bn2``, 0.28 of max |logit| off.)
Zennit's merge also sets the emptied BN to
``running_var = 1``, leaving a factor ``1/sqrt(1 + eps)`` that is negligible
for torchvision (eps 1e-5) but is 0.05 % per BN with Keras' eps = 1e-3; here
``running_var = 1 - eps`` makes it an exact identity (tested: the canonized
network's logits equal the original's).

``bn2`` follows the residual sum, whose pre-BN value is *also* the next unit's
skip input, and a ReLU follows it, so it can be folded neither backwards (into
both branches -- the skip branch has no linear layer when it is an identity or
a max-pool) nor forwards. It is treated as what it is in eval mode, a
per-channel affine map ``z = s x + t``, with the epsilon rule (epsilon =
``stabilizer``): ``R_x = s x / (z + eps) R_z``. The shift ``t`` absorbs (or,
when of opposite sign, adds) relevance, exactly like a conv bias; with this
choice the whole LRP-0 network is Gradient x Input (tested to 1e-6 with
random BN statistics). The alternative, passing ``R_z`` unchanged to ``x``
(Zennit's default ``Pass`` for BNs), was tried and rejected: it hands the
relevance of ``z`` to an ``x`` that may be ~0, and the residual ``Norm`` rule
and the epsilon rules below then divide by that ``x`` -- the conservation
error became median 31x, max 900x the logit on the random-BN test model.

What happens at the residual additions
--------------------------------------
``ResidualUnit.forward`` computes ``x + y`` in a module,
:class:`~ecgray.models.ribeiro2020.ResidualAdd`. Left as it is, LRP would treat
that ``+`` by its gradient: backward through a sum copies the incoming
relevance to *both* operands, so the relevance of every unit would be counted
twice and conservation breaks (sum of input relevance ~ 2^4 x the logit for
four units). The canonizer :class:`~.canonizers.ResidualSumCanonizer` swaps
each ``ResidualAdd`` for a :class:`~.canonizers.ResidualSum`, which computes
``zennit.layer.Sum()(torch.stack([x, y], -1))`` -- what Zennit does for
torchvision's ``BasicBlock``/``Bottleneck``, but by swapping the model's own
add module instead of copying ``forward`` -- and the ``Norm`` rule on that
``Sum`` splits the relevance of the sum in proportion to each branch's
contribution, ``R_x = x / (x + y) R``, ``R_y = y / (x + y) R``, so the sum is
conserved. The pre-BN sum is used twice (``bn2`` and the next unit's skip
path); the relevance arriving from both consumers adds up there, as it should.

Max-pool in the skip path: ``SameMaxPool1d`` is ``F.max_pool1d``; LRP uses its
gradient, which hands each pooled output's relevance to the arg-max input
(winner-take-all). This is the standard LRP treatment of max-pooling and is
conservative. Dropout is the identity in eval mode.

Conservation (delta)
--------------------
``delta = sum(relevance) - f_target(x)`` (logit, or probability) per record x
target. Relevance leaves the network only through bias terms (the folded BN
shifts, the ``bn2`` shifts, the dense bias) and through epsilon. Measured
(``tests/test_lrp.py``, reduced model width 0.25, L = 1024, float32):

* bias-free network (BN mean 0, var 1, gamma 1, beta 0; dense bias 0):
  LRP-epsilon |delta| / |logit| <= 1e-4 (max seen 7e-5); LRP-alpha-beta
  conserves to ~1e-5 at full width (max seen 1.3e-5 at L = 256), but at
  width 0.25 only to ~10 % of the logit:
  alpha-beta is exact only where a neuron has both positive and negative
  contributions, and the narrow 1x1 skip convs (16 inputs) often do not;
* random BN statistics/shifts (3 real CODE-15 exams / 3 synthetic ECGs x 6
  classes): |delta| / |logit| median 0.27 / 0.34 (epsilon), 0.08 / 0.09
  (alpha-beta); relative to the record's largest |logit|: max 0.47 (epsilon),
  0.18 (alpha-beta). (Per logit the max is large -- 27 -- only where a logit
  is near 0.) Relevance absorbed by the BN shifts and the dense bias: a
  property of LRP with biases, reported rather than hidden;
* ``epsilon=0.25, epsilon_scale="rms"``: median ~0.7 even without biases
  (absorbed by epsilon, by design).
"""
from __future__ import annotations

import copy
import warnings
from typing import Any, ClassVar

import torch

from ecgray.attribution.base import AttributionMethod, register_method
from ecgray.models.ribeiro2020 import ResNet1d

FIRST_RULES = ("epsilon", "flat", "wsquare", "zbox", "same")

#: the LRP parameters and their defaults, the one place for them (``lrp_alpha_beta``
#: adds ``alpha``/``beta`` and has ``first_rule="same"``); the composites take them from here
DEFAULTS: dict[str, Any] = {
    "epsilon": 1e-6,
    "epsilon_scale": "absolute",
    "first_rule": "epsilon",
    "stabilizer": 1e-6,
    "zbox_low": None,
    "zbox_high": None,
}


def resnet1d_canonizers() -> list:
    """Fresh Zennit canonizers for :class:`ResNet1d`: BN folding + residual ``Sum`` modules.

    Usable with any Zennit composite: ``EpsilonPlus(canonizers=resnet1d_canonizers())``
    (see :mod:`ecgray.attribution.lrp.canonizers`; imports Zennit).
    """
    from ecgray.attribution.lrp import canonizers

    return canonizers.resnet1d_canonizers()


class _LRP(AttributionMethod):
    #: the composite class (a name in :mod:`ecgray.attribution.lrp.composites`)
    composite_name: ClassVar[str] = ""
    conv_rule: ClassVar[str] = "epsilon"
    default_batch_size = 32
    has_delta = True
    shared_targets = True

    @classmethod
    def check_params(cls, p):
        p = dict(p)
        if float(p["epsilon"]) < 0:
            raise ValueError("epsilon must be >= 0")
        if p["epsilon_scale"] not in ("absolute", "rms"):
            raise ValueError("epsilon_scale must be 'absolute' or 'rms'")
        if float(p["stabilizer"]) <= 0:
            raise ValueError("stabilizer must be > 0")
        if p["first_rule"] not in FIRST_RULES:
            raise ValueError(f"first_rule must be one of {FIRST_RULES}")
        if p["first_rule"] == "zbox" and (p.get("zbox_low") is None or p.get("zbox_high") is None):
            raise ValueError("first_rule='zbox' needs zbox_low and zbox_high (input bounds)")
        return p

    def __init__(self, forward, params=None, *, seed=0, **keywords):
        super().__init__(forward, params, seed=seed, **keywords)
        from ecgray.attribution.lrp import composites

        self.model = copy.deepcopy(forward)
        if not any(isinstance(m, ResNet1d) for m in self.model.modules()):
            warnings.warn(
                "LRP canonization knows ecgray's ResNet1d only; for this model residual additions "
                "written as '+' are not canonized and BNs are not folded",
                stacklevel=3,
            )
        make = getattr(composites, self.composite_name)
        self.composite = make(self.model, canonizers=resnet1d_canonizers(), **self.params)

    def provenance(self):
        out = super().provenance()
        out["conv_rule"] = self.conv_rule
        out["residual_rule"] = "zennit.layer.Sum + Norm"
        out["bn_after_conv"] = "folded into conv"
        out["bn_after_sum"] = "epsilon (affine)"
        return out

    def attribute_rows(self, x, target, record):
        x = x.detach().requires_grad_(True)
        with self.composite.context(self.model) as model:
            out = model(x)
            sel = out.gather(1, target[:, None])
            grad_out = torch.zeros_like(out).scatter(1, target[:, None], sel.detach())
            (rel,) = torch.autograd.grad(out, x, grad_outputs=grad_out)
        delta = rel.sum(dim=tuple(range(1, rel.ndim))) - sel[:, 0].detach()
        return rel.detach(), delta

    def attribute_records(self, x, targets, record):
        """One modified forward, then one modified backward per target (retained graph)."""
        x = x.detach().requires_grad_(True)
        rel = torch.empty((x.shape[0], len(targets), *x.shape[1:]), dtype=x.dtype, device=x.device)
        delta = torch.empty((x.shape[0], len(targets)), dtype=x.dtype, device=x.device)
        with self.composite.context(self.model) as model:
            out = model(x)
            for j, t in enumerate(targets):
                grad_out = torch.zeros_like(out)
                grad_out[:, int(t)] = out[:, int(t)].detach()
                (r,) = torch.autograd.grad(out, x, grad_outputs=grad_out, retain_graph=j < len(targets) - 1)
                rel[:, j] = r
                delta[:, j] = r.sum(dim=tuple(range(1, r.ndim))) - out[:, int(t)].detach()
        return rel.detach(), delta.detach()

    def close(self):
        self.composite.remove()
        self.model = None


@register_method
class LRPEpsilon(_LRP):
    """LRP with the epsilon rule on every conv / dense layer (see module docstring)."""

    name = "lrp_epsilon"
    aliases = ("lrp", "lrp_eps", "lrpepsilon")
    composite_name = "ResNet1dEpsilon"
    conv_rule = "epsilon"
    defaults = dict(DEFAULTS)


@register_method
class LRPAlphaBeta(_LRP):
    """LRP with alpha-beta (2, 1) on every conv (the stem too: first_rule="same"), epsilon on the dense layer."""

    name = "lrp_alpha_beta"
    aliases = ("lrp_ab", "lrp_alpha2_beta1", "lrpalphabeta")
    composite_name = "ResNet1dAlphaBeta"
    conv_rule = "alpha_beta"
    defaults = {"alpha": 2.0, "beta": 1.0, **DEFAULTS, "first_rule": "same"}

    @classmethod
    def check_params(cls, p):
        p = super().check_params(p)
        a, b = float(p["alpha"]), float(p["beta"])
        if a < 0 or b < 0 or abs(a - b - 1.0) > 1e-12:
            raise ValueError("alpha-beta rule needs alpha, beta >= 0 and alpha - beta = 1")
        return p
