"""param_groups(convention=...): the groups carry the convention; AdamC's grouping on torch and HF models."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import decoupled
from cases import make_optimizer
from decoupled import conventions
from decoupled.groups import param_groups

LR, WD = 1e-2, 0.1


class Net(nn.Module):
    """A small pre-norm network: an embedding, a normalized linear, a convolution, attention, an output head."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, d)
        self.norm = nn.LayerNorm(d)
        self.proj = nn.Linear(d, d)
        self.conv = nn.Conv1d(d, d, 1)
        self.mha = nn.MultiheadAttention(d, 2)
        self.head = nn.Linear(d, 10)


class HeadFirst(nn.Module):
    """The output layer registered before the blocks: the last linear layer is not the output."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.head = nn.Linear(d, 3)
        self.blocks = nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d))


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(10, 4)
        self.mix = nn.Linear(4, 4)
        self.lm_head = nn.Linear(4, 10, bias=False)
        self.lm_head.weight = self.wte.weight


def _split(groups: list[dict]) -> tuple[set[str], set[str], set[str]]:
    """(corrected, other decayed, no-decay) parameter names of AdamC's groups, by the keys they carry."""
    corrected = {n for g in groups if g.get("decay_scaling") == "corrected" for n in g["param_names"]}
    plain = {n for g in groups if g.get("decay_scaling") == "lr" for n in g["param_names"]}
    kept = {n for g in groups if g["weight_decay"] == 0 for n in g["param_names"]}
    return corrected, plain, kept


# (model, param_groups options, corrected weights, other decayed parameters)
TORCH_CASES = [
    (
        "net",
        Net,
        {},
        {"proj.weight", "mha.out_proj.weight"},
        {"emb.weight", "conv.weight", "mha.in_proj_weight", "head.weight"},
    ),
    ("head-first-auto", HeadFirst, {}, {"head.weight"}, {"blocks.0.weight"}),  # wrong output: say which one
    ("head-first-named", HeadFirst, {"output_layer": "head"}, {"blocks.0.weight"}, {"head.weight"}),
    (
        "no-output-layer",
        Net,
        {"output_layer": ()},
        {"proj.weight", "mha.out_proj.weight", "head.weight"},
        {"emb.weight", "conv.weight", "mha.in_proj_weight"},
    ),
    ("tied", Tied, {}, {"mix.weight"}, {"wte.weight"}),  # lm_head (the last linear) is the embedding
]


@pytest.mark.parametrize(
    "make, options, corrected, plain", [c[1:] for c in TORCH_CASES], ids=[c[0] for c in TORCH_CASES]
)
def test_adamc_split_on_torch_layers(make, options, corrected, plain) -> None:
    model = make()
    groups = param_groups(model, WD, convention="adamw_corrected", **options)
    assert _split(groups)[:2] == (corrected, plain)
    # the no-decay group is the one without a convention, unchanged
    assert groups[-1] == {**param_groups(model, WD)[-1], "params": groups[-1]["params"]}
    assert [g["weight_decay"] for g in groups] == [WD, WD, 0.0]


def _hf(family: str, tie: bool = True) -> nn.Module:
    t = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
    torch.manual_seed(0)
    if family == "gpt2":
        cfg = t.GPT2Config(
            vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0
        )
        return t.GPT2LMHeadModel(cfg)
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
    cfg = t.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=tie,
    )
    return t.LlamaForCausalLM(cfg)


def _layers(prefix: str, suffixes: list[str]) -> set[str]:
    return {f"{prefix}.{i}.{s}.weight" for i in range(2) for s in suffixes}


# Written from the architectures: every linear layer inside the blocks is followed (through the residual
# stream) by a normalization; the output layer and the embeddings are not linear layers of the blocks.
HF_CASES = [
    ("gpt2", True, _layers("transformer.h", ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]),  # Conv1D
     {"transformer.wte.weight", "transformer.wpe.weight"}, "lm_head"),  # lm_head is wte (tied)
    ("llama", False, _layers("model.layers", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                              "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]),
     {"model.embed_tokens.weight", "lm_head.weight"}, "lm_head"),
    ("llama", True, _layers("model.layers", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                             "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]),
     {"model.embed_tokens.weight"}, "lm_head"),
    ("bert", True, _layers("bert.encoder.layer", ["attention.self.query", "attention.self.key", "attention.self.value",
                                                  "attention.output.dense", "intermediate.dense", "output.dense"])
     | {"cls.predictions.transform.dense.weight"},  # followed by the head's LayerNorm
     {f"bert.embeddings.{e}_embeddings.weight" for e in ("word", "position", "token_type")}, "cls.predictions.decoder"),
]  # fmt: skip


@pytest.mark.parametrize(
    "family, tie, corrected, plain, output", HF_CASES, ids=[f"{c[0]}-tied{int(c[1])}" for c in HF_CASES]
)
def test_adamc_split_on_hf_models(family, tie, corrected, plain, output, capsys) -> None:
    model = _hf(family, tie)
    groups = param_groups(model, WD, convention="adamw_corrected", lr=LR, verbose=True)
    assert _split(groups) == (corrected, plain, set(param_groups(model, WD)[-1]["param_names"]))
    report = capsys.readouterr().out
    assert f"corrected decay (lr**2/lr_max * wd, AdamC) on {len(corrected)} linear weight(s)" in report
    assert f"output layer (torch's lr * wd, not normalized): '{output}'" in report
    assert re.search(r"group 0: weight_decay=0.1\s+adamw_corrected\s+" + str(len(corrected)) + " tensors", report)


@pytest.mark.parametrize("family, tie", [("gpt2", True), ("llama", False), ("llama", True), ("bert", True)])
def test_the_output_layer_never_gets_corrected_decay(family: str, tie: bool) -> None:
    """The paper's derivation needs a normalization after the layer; the output layer has none."""
    model = _hf(family, tie)
    head = model.get_output_embeddings().weight
    opt = decoupled.AdamW(param_groups(model, WD, convention="adamw_corrected"), lr=LR)
    (group,) = [g for g in opt.param_groups if any(p is head for p in g["params"])]
    assert conventions.of_group(group).key == "adamw" and group["weight_decay"] == WD


@pytest.mark.parametrize("family, tie", [("gpt2", True), ("llama", False)])
def test_optimizer_from_adamc_groups_steps(family: str, tie: bool) -> None:
    model = _hf(family, tie)
    opt = decoupled.AdamW(param_groups(model, WD, convention="adamw_corrected"), lr=LR)
    assert [conventions.of_group(g).key for g in opt.param_groups] == ["adamw_corrected", "adamw", "adamw"]
    assert opt.param_groups[0]["lr_max"] == LR and "lr_max" not in opt.param_groups[1]
    before = [p.detach().clone() for p in model.parameters()]
    ids = torch.randint(0, 64, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert all(opt.state[p]["step"].item() == 1 for g in opt.param_groups for p in g["params"])


def test_adamc_decay_follows_the_schedule_per_group() -> None:
    """With zero gradients a step is decay alone: the corrected weight loses lr**2/lr_max*wd, the output
    layer lr*wd, the no-decay parameters nothing, at each lr of a falling schedule."""
    model = Net()
    opt = decoupled.AdamW(param_groups(model, WD, convention="adamw_corrected"), lr=LR, backend="loop")
    proj, head, norm = model.proj.weight, model.head.weight, model.norm.weight
    expected = {proj: 1.0, head: 1.0, norm: 1.0}
    start = {p: p.detach().clone() for p in expected}
    for lr in (LR, LR / 2, LR / 10):
        for g in opt.param_groups:
            g["lr"] = lr
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        expected[proj] *= 1 - lr * lr / LR * WD
        expected[head] *= 1 - lr * WD
    for p, factor in expected.items():
        torch.testing.assert_close(p.detach(), start[p] * factor, rtol=1e-6, atol=0)


@pytest.mark.parametrize("convention", ["adamw", "adamw_indep", "adamw_cautious", "adam_l2"])
def test_the_groups_carry_every_other_convention(convention: str) -> None:
    """decoupled.AdamW(param_groups(model, convention=c)) runs exactly what the convention's own optimizer
    (its keywords, or decoupled.Adam for adam_l2) runs on plain groups."""
    c = conventions.get(convention)
    model, twin = Net(), Net()
    twin.load_state_dict(model.state_dict())
    groups = param_groups(model, WD, convention=convention)
    assert conventions.of_group(groups[0]) == c and len(groups) == 2
    assert not {"decay_scaling", "cautious_decay", "decoupled_weight_decay"} & set(groups[1])  # no-decay: unchanged
    ours = decoupled.AdamW(groups, lr=LR, backend="loop")
    theirs = make_optimizer(param_groups(twin, WD), c, lr=LR, backend="loop")
    assert [conventions.of_group(g).key for g in ours.param_groups][:1] == [convention]
    for step in range(5):
        for m in (model, twin):
            torch.manual_seed(step)
            sum((p * torch.randn_like(p)).sum() for p in m.parameters()).backward()
        ours.step(), theirs.step()
        ours.zero_grad(), theirs.zero_grad()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(p, q), name


def test_lr_max_goes_where_the_decay_follows_it() -> None:
    groups = param_groups(Net(), WD, convention="adamw_corrected", lr_max=2 * LR)
    assert [g.get("lr_max") for g in groups] == [2 * LR, None, None]
    opt = decoupled.AdamW(groups, lr=LR)
    assert [g.get("lr_max") for g in opt.param_groups] == [2 * LR, None, None]
    opt = decoupled.AdamW(param_groups(Net(), WD, convention="adamw_indep", lr_max=2 * LR), lr=LR)
    assert [g.get("lr_max") for g in opt.param_groups] == [2 * LR, None]


def test_a_groups_own_convention_wins_over_the_optimizers() -> None:
    model = Net()
    opt = decoupled.AdamW(param_groups(model, WD, convention="adamw_corrected"), lr=LR, decay_scaling="independent", cautious_decay=True)  # fmt: skip
    assert [conventions.of_group(g).key for g in opt.param_groups] == [
        "adamw_corrected",
        "adamw",
        "adamw_indep+cautious",
    ]
    # without convention= the optimizer's keywords decide, as before
    opt = decoupled.AdamW(param_groups(model, WD), lr=LR, decay_scaling="corrected")
    assert [conventions.of_group(g).key for g in opt.param_groups] == ["adamw_corrected", "adamw_corrected"]


# (param_groups keywords, the decayed groups' weight_decay, and their conventions)
TIMESCALE_CASES = [
    (dict(tau=1000, lr=LR, convention="adamw_corrected"), [1 / (LR * 1000)] * 2, ["adamw_corrected", "adamw"]),
    (dict(tau=1000, convention="adamw_indep"), [1 / 1000], ["adamw_indep"]),
    (dict(tau_fraction=0.5, total_steps=2000, lr=LR, convention="adamw_cautious"), [1 / (LR * 1000)], ["adamw_cautious"]),
    # per group: with lr_max = 2 lr the corrected weights need twice the weight decay, the others do not
    (dict(tau=1000, lr=LR, lr_max=2 * LR, convention="adamw_corrected"), [2 / (LR * 1000), 1 / (LR * 1000)], ["adamw_corrected", "adamw"]),
]  # fmt: skip


@pytest.mark.parametrize(
    "kwargs, expected, keys", TIMESCALE_CASES, ids=[str(sorted(k.items())) for k, _, _ in TIMESCALE_CASES]
)
def test_timescale_per_convention(kwargs: dict, expected: list[float], keys: list[str]) -> None:
    """Every decayed group removes 1/tau per step at peak lr under the convention it carries."""
    decayed = [g for g in param_groups(Net(), **kwargs) if g["weight_decay"] > 0]
    assert [conventions.of_group(g).key for g in decayed] == keys
    assert [g["weight_decay"] for g in decayed] == pytest.approx(expected, rel=1e-12)
    for g in decayed:
        per_step = conventions.of_group(g).decay_per_step(g["weight_decay"], LR, g.get("lr_max", LR))
        assert per_step == pytest.approx(1 / 1000, rel=1e-12)


ERRORS = [
    (
        dict(convention="adamw_corrected", output_layer="haed"),
        "output_layer 'haed' is not a module of Net; did you mean 'head'?",
    ),
    (
        dict(convention="adamw_indep", output_layer="head"),
        "output_layer= only applies with convention='adamw_corrected'",
    ),
    (dict(output_layer="head"), "output_layer= only applies with convention='adamw_corrected'"),
    (
        dict(convention="adamw_corrected", decay_scaling="lr"),
        "convention='adamw_corrected' sets ['decay_scaling'] itself",
    ),
    (
        dict(convention="adamw", lr_max=1e-3),
        "lr_max= applies to decay that follows lr / lr_max (adamw_indep, adamw_corrected); the adamw convention has none",
    ),
    (dict(convention="adamc"), "unknown weight-decay convention 'adamc'"),
]


@pytest.mark.parametrize("kwargs, message", ERRORS, ids=[m[:40] for _, m in ERRORS])
def test_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        param_groups(Net(), WD, **kwargs)
