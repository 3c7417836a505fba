"""MemoryBank (SBase memory, DCDFA Sec. 4.1) and the circle-re-weighted memory loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from reidlab.losses import memory_contrastive_loss
from reidlab.nn import MemoryBank
from tests.helpers import run_script


def unit(*xs: float) -> torch.Tensor:
    return F.normalize(torch.tensor(xs, dtype=torch.float32), dim=0)


def ready_bank(source: torch.Tensor, target: torch.Tensor, momentum: float = 0.2) -> MemoryBank:
    bank = MemoryBank(source.shape[1], len(source), len(target), momentum=momentum)
    bank.init_source(source, torch.arange(len(source)))
    bank.init_target(target)
    return bank


# ---------------------------------------------------------------- MemoryBank


def test_init_source_is_normalised_mean_of_normalised_features():
    bank = MemoryBank(2, 2, 1)
    bank.init_source(torch.tensor([[3.0, 0.0], [0.0, 1.0], [2.0, 2.0]]), torch.tensor([0, 0, 1]))
    # class 0: mean([1, 0], [0, 1]) = [.5, .5] -> [1, 1] / sqrt(2); class 1: [2, 2] -> same
    expected = torch.full((2, 2), 1 / math.sqrt(2))
    torch.testing.assert_close(bank.source, expected)


def test_init_errors_name_the_problem():
    bank = MemoryBank(3, 5, 4)
    with pytest.raises(ValueError, match=r"\[1, 3\]"):
        bank.init_source(torch.randn(4, 3), torch.tensor([0, 2, 4, 0]))
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        bank.init_target(torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        bank.init_target(torch.randn(4, 2))


def test_initialized_flag_and_update_before_init():
    bank = MemoryBank(3, 2, 4)
    assert not bank.initialized
    with pytest.raises(RuntimeError):
        bank.update(None, None, torch.randn(1, 3), torch.tensor([0]))
    bank.init_source(torch.randn(2, 3), torch.tensor([0, 1]))
    assert not bank.initialized  # the target part is still empty
    target = torch.randn(4, 3)
    bank.init_target(target)
    assert bank.initialized
    torch.testing.assert_close(bank.target, F.normalize(target, dim=1))


def test_update_by_hand_with_repeated_index():
    bank = ready_bank(torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
                      torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    before = bank.target.clone()
    # target entry 0 = [1, 0] gets two features, normalised: [0, 1] and [1, 0] -> mean [.5, .5];
    # 0.2 * [1, 0] + 0.8 * [.5, .5] = [.6, .4] -> / sqrt(.52)
    bank.update(None, None, torch.tensor([[0.0, 5.0], [3.0, 0.0]]), torch.tensor([0, 0]))
    torch.testing.assert_close(bank.target[0], torch.tensor([0.6, 0.4]) / math.sqrt(0.52))
    torch.testing.assert_close(bank.target[1:], before[1:])
    # prototype 1 = [0, 1] with the class-1 feature [-2, 0] -> 0.2 * [0, 1] + 0.8 * [-1, 0]
    bank.update(torch.tensor([[-2.0, 0.0]]), torch.tensor([1]), None, None)
    torch.testing.assert_close(bank.source[1], torch.tensor([-0.8, 0.2]) / math.sqrt(0.68))
    torch.testing.assert_close(bank.source[0], torch.tensor([1.0, 0.0]))


def test_update_matches_a_loop_reference_and_detaches():
    torch.manual_seed(0)
    bank = ready_bank(torch.randn(4, 5), torch.randn(7, 5), momentum=0.3)
    source, target = bank.source.clone(), bank.target.clone()
    s_feat, s_lab = torch.randn(6, 5, requires_grad=True), torch.tensor([3, 0, 3, 3, 1, 0])
    t_feat, t_idx = torch.randn(5, 5, requires_grad=True), torch.tensor([6, 2, 6, 0, 2])
    bank.update(s_feat, s_lab, t_feat, t_idx)
    for memory, feats, rows in ((source, s_feat, s_lab), (target, t_feat, t_idx)):
        feats = F.normalize(feats.detach(), dim=1)
        for r in rows.unique().tolist():
            mean = feats[rows == r].mean(0)
            memory[r] = F.normalize(0.3 * memory[r] + 0.7 * mean, dim=0)
    torch.testing.assert_close(bank.source, source)
    torch.testing.assert_close(bank.target, target)
    assert bank.source.grad_fn is None and bank.target.grad_fn is None
    torch.testing.assert_close(bank.target.norm(dim=1), torch.ones(7))


def test_update_rejects_mismatched_pairs():
    bank = ready_bank(torch.randn(2, 3), torch.randn(3, 3))
    with pytest.raises(ValueError):
        bank.update(torch.randn(2, 3), None, None, None)
    with pytest.raises(ValueError):
        bank.update(None, None, torch.randn(2, 3), torch.tensor([0, 1, 2]))


def test_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    bank = ready_bank(torch.randn(3, 4), torch.randn(5, 4))
    bank.update(torch.randn(2, 4), torch.tensor([0, 2]), torch.randn(2, 4), torch.tensor([1, 4]))
    assert set(bank.state_dict()) == {"source", "target", "initialized"}
    torch.save(bank.state_dict(), tmp_path / "bank.pt")
    fresh = MemoryBank(4, 3, 5)
    fresh.load_state_dict(torch.load(tmp_path / "bank.pt"))
    assert fresh.initialized
    torch.testing.assert_close(fresh.source, bank.source)
    torch.testing.assert_close(fresh.target, bank.target)


def test_update_under_ddp_equals_single_process_on_the_concatenated_batch(tmp_path):
    run_script("ddp_memory.py", str(tmp_path), tmp_path=tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for key in ("source", "target"):
        assert torch.equal(ranks[0]["final"][key], ranks[1]["final"][key])
        assert not torch.equal(ranks[0]["final"][key], ranks[0]["initial"][key])
    inputs = {k: torch.cat([r["inputs"][k] for r in ranks]) for k in ranks[0]["inputs"]}
    single = MemoryBank(4, 3, 6)
    single.load_state_dict(ranks[0]["initial"])
    single.update(**inputs)
    single.update(None, None, inputs["target_features"] * 2, inputs["target_indices"])
    torch.testing.assert_close(ranks[0]["final"]["source"], single.source)
    torch.testing.assert_close(ranks[0]["final"]["target"], single.target)
    # and a rank-local update would have differed: the gathering mattered
    local = MemoryBank(4, 3, 6)
    local.load_state_dict(ranks[0]["initial"])
    local.update(**ranks[0]["inputs"])
    assert not torch.allclose(local.target, single.target)


# ---------------------------------------------------------------- memory contrastive loss


def reference_loss(features, labels, is_source, source, target, target_labels, m, gamma):
    """Explicit per-query loop in float64."""

    def lse(xs):
        top = max(xs)
        return top + math.log(sum(math.exp(x - top) for x in xs))

    losses = []
    for q in range(len(features)):
        y, src = int(labels[q]), bool(is_source[q])
        if not src and y == -1:
            continue
        f = F.normalize(features[q].double(), dim=0)
        s_p, s_n = [], []
        for c in range(len(source)):
            s = float(f @ source[c].double())
            (s_p if src and c == y else s_n).append(s)
        for j in range(len(target)):
            s = float(f @ target[j].double())
            (s_p if not src and int(target_labels[j]) == y else s_n).append(s)
        lp = [-gamma * max(1 + m - s, 0) * (s - (1 - m)) for s in s_p]
        ln = [gamma * max(s + m, 0) * (s - m) for s in s_n]
        x = lse(lp) + lse(ln)
        losses.append(max(x, 0) + math.log1p(math.exp(-abs(x))))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("gamma", [128.0, 4.0])
def test_memory_loss_matches_loop_reference(gamma):
    torch.manual_seed(0)
    bank = ready_bank(torch.randn(3, 6), torch.randn(8, 6))
    target_labels = torch.tensor([0, 1, 0, -1, 2, 1, -1, 2])
    # source queries of classes 2, 0; target queries with labels 0, 1, -1 (ignored), 2
    labels = torch.tensor([2, 0, 0, 1, -1, 2])
    is_source = torch.tensor([True, True, False, False, False, False])
    features = torch.randn(6, 6, requires_grad=True)
    loss = memory_contrastive_loss(features, labels, is_source, bank, target_labels, 0.25, gamma)
    expected = reference_loss(features.detach(), labels, is_source, bank.source, bank.target,
                              target_labels, 0.25, gamma)
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    loss.backward()
    assert features.grad[4].abs().sum() == 0  # the ignored -1 query
    assert (features.grad[[0, 1, 2, 3, 5]].abs().sum(1) > 0).all()


def test_memory_loss_by_hand():
    # query = prototype 0 = e1, orthogonal to the other 3 entries: s_p = 1, s_n = 0;
    # logit_p = -128 * 0.25 * (1 - 0.75) = -8, each logit_n = 128 * 0.25 * (0 - 0.25) = -8
    # loss = softplus(-8 + (-8 + log 3))
    bank = ready_bank(torch.eye(4)[:2], torch.eye(4)[2:])
    loss = memory_contrastive_loss(torch.eye(4)[:1] * 3, torch.tensor([0]), torch.tensor([True]),
                                   bank, torch.tensor([-1, -1]))
    assert loss.item() == pytest.approx(math.log1p(math.exp(-16 + math.log(3))), rel=1e-5)


def test_memory_loss_without_valid_query_is_zero_with_graph():
    bank = ready_bank(torch.randn(2, 3), torch.randn(4, 3))
    features = torch.randn(2, 3, requires_grad=True)
    loss = memory_contrastive_loss(features, torch.tensor([-1, -1]), torch.tensor([False, False]),
                                   bank, torch.tensor([0, 0, -1, 1]))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(features.grad, torch.zeros(2, 3))


def test_memory_loss_checks_target_labels_shape():
    bank = ready_bank(torch.randn(2, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"\(4,\)"):
        memory_contrastive_loss(torch.randn(1, 3), torch.tensor([0]), torch.tensor([True]),
                                bank, torch.tensor([0, 1]))


def test_memory_loss_in_fp32_under_autocast():
    torch.manual_seed(0)
    bank = ready_bank(torch.randn(3, 8), torch.randn(5, 8))
    args = (torch.randn(4, 8), torch.tensor([0, 2, 1, 0]), torch.tensor([True, True, False, False]),
            bank, torch.tensor([0, 1, 1, -1, 0]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = memory_contrastive_loss(*args)
    assert mixed.dtype == torch.float32
    assert mixed.item() == pytest.approx(memory_contrastive_loss(*args).item(), rel=1e-6)
