"""decoupled.param_groups / no_decay_reasons: which parameters decay, on torch and HF models."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

import decoupled
from decoupled.groups import BIAS, EMBEDDING, ONE_D, is_norm, no_decay_reasons, param_groups


class MyRMSNorm(nn.Module):
    """A custom norm that torch does not know, with a parameter not called weight."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.scale


class ScaleOnly(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class PreNormBlock(nn.Module):
    """Named *Norm* but owns a weight matrix: not a normalization layer."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.mix = nn.Parameter(torch.randn(d, d))
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x) @ self.mix


class Zoo(nn.Module):
    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, d)
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, d))
        self.lin = nn.Linear(d, d)
        self.ln = nn.LayerNorm(d)
        self.ln2d = nn.LayerNorm((4, d))
        self.rms = nn.RMSNorm(d)
        self.gn = nn.GroupNorm(2, d)
        self.bn1 = nn.BatchNorm1d(d)
        self.bn2 = nn.BatchNorm2d(d)
        self.inorm = nn.InstanceNorm2d(d, affine=True)
        self.conv = nn.Conv2d(d, d, 3)
        self.my = MyRMSNorm(d)
        self.scale = ScaleOnly(d)
        self.block = PreNormBlock(d)
        self.head = nn.Linear(d, 1)
        self.mha = nn.MultiheadAttention(d, 2)


EXPECTED_ZOO = {
    "emb.weight": None,
    "pos_embed": None,
    "lin.weight": None,
    "lin.bias": BIAS,
    "ln.weight": "normalization (LayerNorm)",
    "ln.bias": "normalization (LayerNorm)",
    "ln2d.weight": "normalization (LayerNorm)",  # 2-D, still a norm by type
    "ln2d.bias": "normalization (LayerNorm)",
    "rms.weight": "normalization (RMSNorm)",
    "gn.weight": "normalization (GroupNorm)",
    "gn.bias": "normalization (GroupNorm)",
    "bn1.weight": "normalization (BatchNorm1d)",
    "bn1.bias": "normalization (BatchNorm1d)",
    "bn2.weight": "normalization (BatchNorm2d)",
    "bn2.bias": "normalization (BatchNorm2d)",
    "inorm.weight": "normalization (InstanceNorm2d)",
    "inorm.bias": "normalization (InstanceNorm2d)",
    "conv.weight": None,
    "conv.bias": BIAS,
    "my.scale": "normalization (custom MyRMSNorm)",
    "scale.scale": ONE_D,
    "block.mix": None,
    "block.norm.weight": "normalization (LayerNorm)",
    "block.norm.bias": "normalization (LayerNorm)",
    "head.weight": None,  # shape (1, d): a weight matrix, decays
    "head.bias": BIAS,
    "mha.in_proj_weight": None,
    "mha.in_proj_bias": BIAS,
    "mha.out_proj.weight": None,
    "mha.out_proj.bias": BIAS,
}


def test_reasons_on_torch_layers() -> None:
    assert no_decay_reasons(Zoo()) == EXPECTED_ZOO


def test_embeddings_kept_out_when_asked() -> None:
    reasons = no_decay_reasons(Zoo(), decay_embeddings=False)
    assert reasons["emb.weight"] == EMBEDDING
    assert reasons["pos_embed"] == EMBEDDING
    assert {k: v for k, v in reasons.items() if k not in ("emb.weight", "pos_embed")} == {
        k: v for k, v in EXPECTED_ZOO.items() if k not in ("emb.weight", "pos_embed")
    }


def test_is_norm_by_structure() -> None:
    assert is_norm(MyRMSNorm(4)) == "normalization (custom MyRMSNorm)"
    assert is_norm(ScaleOnly(4)) is None  # not named a norm: rule 6 (1-D) handles its gain
    assert is_norm(PreNormBlock(4)) is None  # owns a matrix

    class ChannelNorm2d(nn.Module):  # vector-shaped but 4-D gain
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.ones(1, 6, 1, 1))

    assert no_decay_reasons(ChannelNorm2d()) == {"gain": "normalization (custom ChannelNorm2d)"}
    assert is_norm(nn.LocalResponseNorm(2)) == "normalization (LocalResponseNorm)"


TORCH_NORM_LAYERS = [
    nn.BatchNorm1d(3),
    nn.BatchNorm2d(3),
    nn.BatchNorm3d(3),
    nn.SyncBatchNorm(3),
    nn.InstanceNorm1d(3, affine=True),
    nn.InstanceNorm2d(3, affine=True),
    nn.InstanceNorm3d(3, affine=True),
    nn.LazyBatchNorm1d(),
    nn.LazyBatchNorm2d(),
    nn.LazyBatchNorm3d(),
    nn.LazyInstanceNorm1d(affine=True),
    nn.LazyInstanceNorm2d(affine=True),
    nn.LazyInstanceNorm3d(affine=True),
    nn.LayerNorm(3),
    nn.GroupNorm(1, 3),
    nn.RMSNorm(3),
]


@pytest.mark.parametrize("layer", TORCH_NORM_LAYERS, ids=[type(m).__name__ for m in TORCH_NORM_LAYERS])
def test_every_torch_norm_layer_is_a_norm(layer: nn.Module) -> None:
    assert is_norm(layer) == f"normalization ({type(layer).__name__})"


def test_every_batch_and_instance_norm_class_of_torch_is_listed() -> None:
    """TORCH_NORMS names torch's classes one by one; a class torch adds on batchnorm's base shows up here."""
    base = nn.modules.batchnorm._NormBase
    classes = {c for c in vars(nn).values() if isinstance(c, type) and issubclass(c, base)}
    assert len(classes) >= 13 and classes <= set(decoupled.groups.TORCH_NORMS)


def test_groups_split_and_options() -> None:
    model = Zoo()
    groups = param_groups(model, weight_decay=0.1, lr=3e-4, betas=(0.9, 0.95))
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert all(g["lr"] == 3e-4 and g["betas"] == (0.9, 0.95) for g in groups)
    decayed = {n for n, r in EXPECTED_ZOO.items() if r is None}
    assert set(groups[0]["param_names"]) == decayed
    assert set(groups[1]["param_names"]) == set(EXPECTED_ZOO) - decayed
    named = dict(model.named_parameters())
    for g in groups:
        assert all(p is named[n] for n, p in zip(g["param_names"], g["params"]))
    # every trainable parameter exactly once
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())


def test_empty_group_dropped_and_frozen_left_out() -> None:
    groups = param_groups(nn.LayerNorm(4), weight_decay=0.1)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    model[0].requires_grad_(False)
    groups = param_groups(model)
    assert [g["param_names"] for g in groups] == [["1.weight"], ["1.bias"]]


def test_tied_parameters_counted_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte = nn.Embedding(10, 4)
            self.lm_head = nn.Linear(4, 10, bias=False)
            self.lm_head.weight = self.wte.weight

    model = Tied()
    assert no_decay_reasons(model) == {"wte.weight": None}
    # the tied output projection follows its embedding
    assert no_decay_reasons(model, decay_embeddings=False) == {"wte.weight": EMBEDDING}
    groups = param_groups(model, decay_embeddings=False)
    assert len(groups) == 1 and len(groups[0]["params"]) == 1
    # a rule on the second name reaches the tied tensor
    assert no_decay_reasons(model, no_decay=["lm_head.*"]) == {"wte.weight": "rule 'lm_head.*'"}


def test_no_weight_decay_convention() -> None:
    class ViTish(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
            self.blocks = nn.Sequential(nn.Linear(4, 4))
            self.blocks[0].weight._no_weight_decay = True  # the Mamba-style attribute

        def no_weight_decay(self) -> set[str]:
            return {"cls_token"}

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vit = ViTish()
            self.extra = nn.Linear(4, 4, bias=False)

    reasons = no_decay_reasons(Outer())  # names are relative to the module that lists them
    assert reasons == {
        "vit.cls_token": "no_weight_decay()",
        "vit.blocks.0.weight": "_no_weight_decay attribute",
        "vit.blocks.0.bias": BIAS,
        "extra.weight": None,
    }


def test_rules_glob_regex_type_and_precedence() -> None:
    model = Zoo()
    reasons = no_decay_reasons(
        model,
        no_decay=["lin.*", re.compile(r"^conv\.weight$"), PreNormBlock],
        decay=["scale.scale", nn.GroupNorm],
    )
    assert reasons["lin.weight"] == "rule 'lin.*'"
    assert reasons["lin.bias"] == "rule 'lin.*'"
    assert reasons["conv.weight"] == "rule " + repr("re:" + r"^conv\.weight$")
    assert reasons["block.mix"] == "rule 'PreNormBlock'"
    assert reasons["block.norm.weight"] == "rule 'PreNormBlock'"  # type rules cover submodules
    assert reasons["scale.scale"] is None and reasons["gn.weight"] is None and reasons["gn.bias"] is None
    assert reasons["ln.weight"] == "normalization (LayerNorm)"  # untouched


def test_rule_errors() -> None:
    model = Zoo()
    with pytest.raises(ValueError, match="both a decay and a no_decay rule.*lin.weight"):
        no_decay_reasons(model, no_decay=["lin.*"], decay=[nn.Linear])
    with pytest.raises(TypeError, match="a rule is a name glob"):
        no_decay_reasons(model, no_decay=[42])
    with pytest.warns(UserWarning, match="matched no parameter.*'\\*.bias'"):
        no_decay_reasons(model, no_decay=["bias"])  # globs match whole names
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups(model, weight_decay=-0.1)
    with pytest.raises(ValueError, match="sets \\['params'\\] itself"):
        param_groups(model, params=[])


def test_verbose_report(capsys: pytest.CaptureFixture[str]) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    param_groups(model, weight_decay=0.1, verbose=True)
    out = capsys.readouterr().out
    assert "2 group(s), 6 tensors, 74 parameters" in out
    assert re.search(r"group 0: weight_decay=0.1\s+2 tensors\s+48 parameters", out)
    assert re.search(r"group 1: weight_decay=0\s+4 tensors\s+26 parameters", out)
    assert re.search(r"normalization \(LayerNorm\)\s+2 tensors\s+16 parameters", out)
    assert re.search(r"bias\s+2 tensors\s+10 parameters", out)


@pytest.mark.parametrize("backend", [{"foreach": False}, {"foreach": True}, {"fused": True}])
def test_groups_work_with_torch_and_decoupled(backend: dict[str, bool]) -> None:
    torch.manual_seed(0)
    model = Zoo()
    twin = Zoo()
    twin.load_state_dict(model.state_dict())
    opt_a = decoupled.AdamW(param_groups(model, weight_decay=0.5), lr=1e-2, **backend)
    opt_b = torch.optim.AdamW(param_groups(twin, weight_decay=0.5), lr=1e-2, **backend)
    for _ in range(3):
        for m, opt in ((model, opt_a), (twin, opt_b)):
            opt.zero_grad()
            sum(p.square().sum() for p in m.parameters()).backward()
            opt.step()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(p, q), name
    assert opt_a.state_dict()["param_groups"][0]["param_names"] == opt_b.state_dict()["param_groups"][0]["param_names"]
    # a no-decay parameter with zero gradient stays put; a decayed one shrinks by lr * wd
    w = nn.Parameter(torch.ones(3, 3))
    b = nn.Parameter(torch.ones(3))
    holder = nn.Module()
    holder.register_parameter("weight", w)
    holder.register_parameter("bias", b)
    opt = decoupled.AdamW(param_groups(holder, weight_decay=0.5), lr=0.1)
    w.grad, b.grad = torch.zeros_like(w), torch.zeros_like(b)
    opt.step()
    assert torch.allclose(w, torch.full_like(w, 0.95)) and torch.equal(b, torch.ones(3))


# (param_groups keywords, the decayed group's weight_decay: 1/tau of each weight per step at peak lr)
TIMESCALE_CASES = [
    (dict(tau=10_000, lr=1e-3), 1 / (1e-3 * 10_000)),
    (dict(tau=10_000, lr=1e-3, convention="adamw_corrected"), 1 / (1e-3 * 10_000)),
    (dict(tau=10_000, lr=1e-3, convention="adamw_cautious"), 1 / (1e-3 * 10_000)),
    (dict(tau=10_000, convention="adamw_indep"), 1 / 10_000),
    (dict(tau=10_000, lr=1e-3, convention="indep"), 1 / 10_000),  # the alias
    (dict(tau_fraction=0.25, total_steps=40_000, lr=1e-3), 1 / (1e-3 * 10_000)),
    (dict(tau_fraction=0.25, total_steps=40_000, convention="adamw_indep"), 1 / 10_000),
]


@pytest.mark.parametrize("kwargs, expected", TIMESCALE_CASES, ids=[str(sorted(k.items())) for k, _ in TIMESCALE_CASES])
def test_set_the_timescale_not_the_coefficient(kwargs: dict, expected: float) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8))
    groups = param_groups(model, **kwargs)
    assert groups[0]["weight_decay"] == pytest.approx(expected, rel=1e-12)
    assert groups[1]["weight_decay"] == 0.0
    if "lr" in kwargs:  # the lr the timescale was set for travels with the groups
        assert all(g["lr"] == kwargs["lr"] for g in groups)


def test_the_timescale_holds_in_the_optimizer() -> None:
    """With zero gradients, tau steps of decoupled.AdamW at that lr leave exp(-1) of a decayed weight."""
    w = nn.Parameter(torch.ones(3, 3))
    holder = nn.Module()
    holder.register_parameter("weight", w)
    opt = decoupled.AdamW(param_groups(holder, tau=50, lr=1e-2), lr=1e-2)
    for _ in range(50):
        w.grad = torch.zeros_like(w)
        opt.step()
    assert w.detach()[0, 0].item() == pytest.approx((1 - 1 / 50) ** 50, rel=1e-5)
    assert abs((1 - 1 / 50) ** 50 - math.exp(-1)) < 0.01


TIMESCALE_ERRORS = [
    (dict(weight_decay=0.1, tau=1000, lr=1e-3), "not both"),
    (dict(tau=1000), "a timescale with the adamw convention needs the peak lr: pass lr=..."),
    (dict(tau=1000, lr=1e-3, convention="adam_l2"), "adam_l2 convention has no timescale"),
    (dict(tau=1000, lr=1e-3, convention="adamw_fast"), "unknown weight-decay convention 'adamw_fast'"),
    (dict(tau_fraction=0.5, lr=1e-3), "tau_fraction needs total_steps"),
    (dict(tau=-5, lr=1e-3), "tau must be a positive finite number"),
    (dict(tau=1000, tau_fraction=0.5, lr=1e-3, total_steps=10), "not both or neither"),
    (dict(total_steps=1000), "total_steps= goes with tau_fraction="),
]


@pytest.mark.parametrize("kwargs, pattern", TIMESCALE_ERRORS, ids=[p for _, p in TIMESCALE_ERRORS])
def test_timescale_errors(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=re.escape(pattern)):
        param_groups(nn.Linear(2, 2), **kwargs)


# ---- real model families built from a config ----------------------------------------------


def _tiny(family: str) -> nn.Module:
    t = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
    if family == "bert":
        cfg = t.BertConfig(
            vocab_size=64,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=32,
        )
        return t.BertForMaskedLM(cfg)
    if family == "gpt2":
        cfg = t.GPT2Config(
            vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0
        )
        return t.GPT2LMHeadModel(cfg)
    cfg = t.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
    )
    return t.LlamaForCausalLM(cfg)


# What each family's no-decay parameters are, written from the architecture (not the code).
FAMILY_NO_DECAY = {
    "bert": lambda n: "LayerNorm" in n or n.endswith("bias"),
    "gpt2": lambda n: ".ln_" in n or n.endswith("bias"),
    "llama": lambda n: "layernorm" in n or n == "model.norm.weight",
}


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_hf_families(family: str) -> None:
    model = _tiny(family)
    reasons = no_decay_reasons(model)
    assert list(reasons) == [n for n, _ in model.named_parameters()]
    assert {n for n, r in reasons.items() if r is not None} == {n for n in reasons if FAMILY_NO_DECAY[family](n)}
    if family == "llama":
        assert reasons["model.norm.weight"] == "normalization (custom LlamaRMSNorm)"
    # Trainer's own default decides the same for these families (embeddings decay in both)
    from transformers import Trainer

    trainer_decay = set(Trainer.get_decay_parameter_names(None, model))
    assert {n for n, r in reasons.items() if r is None} == trainer_decay & set(reasons)
    # tied embeddings (GPT-2, and Llama with tie_word_embeddings) counted once, kept out on request
    off = no_decay_reasons(model, decay_embeddings=False)
    embeddings = {n for n, r in off.items() if r == EMBEDDING}
    assert embeddings and all("embed" in n or ".wte." in n or ".wpe." in n for n in embeddings)
    groups = param_groups(model, decay_embeddings=False)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    decoupled.AdamW(groups, lr=1e-3)  # the optimizer accepts them
