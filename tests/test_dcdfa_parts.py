"""DCDFA parts (Zhang et al., CVPR 2021, Sec. 3.1-3.3): channel attention (eq. 3), domain
classifier, L_CID (eq. 6) and L_Domain (eq. 7)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from reidlab.losses import cross_domain_id_loss, domain_classification_loss
from reidlab.nn import ChannelAttention, DomainClassifier

# ---------------------------------------------------------------- L_CID (eq. 6)


def reference_cid(f_s, f_t, r_s, r_t, tau):
    """Explicit loops: anchors f^s_i, f^t_j, r^s_j, r^t_i with identities i, j, j, i."""

    def cos(a, b):
        return float(a @ b) / (float(a.norm()) * float(b.norm()))

    total, count = 0.0, 0
    for k in range(len(f_s)):
        elems = [(f_s[k], "i"), (f_t[k], "j"), (r_s[k], "j"), (r_t[k], "i")]
        for a, (anchor, ident) in enumerate(elems):
            others = [(cos(anchor, x), xi) for b, (x, xi) in enumerate(elems) if b != a]
            s_pos = [s for s, xi in others if xi == ident]
            s_neg = [s for s, xi in others if xi != ident]
            assert len(s_pos) == 1 and len(s_neg) == 2
            total += math.log(1 + math.exp(-s_pos[0] / tau) * sum(math.exp(s / tau)
                                                                    for s in s_neg))
            count += 1
    return total / count


def test_cid_by_hand():
    # f^s_i = r^t_i = e1 and f^t_j = r^s_j = e2: every anchor has s+ = 1 and two s- = 0, so with
    # tau = 1 each of the 4 terms is log(1 + exp(-1) * (1 + 1)) = log(1 + 2/e) = 0.551444...
    e1, e2 = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 2.0, 0.0]])
    loss = cross_domain_id_loss(e1, e2, e2, e1, torch.tensor(1.0))
    assert loss.item() == pytest.approx(0.5514447, abs=1e-6)
    assert loss.item() == pytest.approx(math.log(1 + 2 / math.e), rel=1e-6)


@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_cid_matches_loop_reference_and_trains_tau(tau):
    torch.manual_seed(0)
    f_s, f_t, r_s, r_t = (torch.randn(2, 3, requires_grad=True) for _ in range(4))
    tau_param = nn.Parameter(torch.tensor(tau))
    loss = cross_domain_id_loss(f_s, f_t, r_s, r_t, tau_param)
    expected = reference_cid(f_s.detach(), f_t.detach(), r_s.detach(), r_t.detach(), tau)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert tau_param.grad is not None and tau_param.grad.item() != 0
    assert all(x.grad.abs().sum() > 0 for x in (f_s, f_t, r_s, r_t))


def test_cid_pairs_rows_not_a_permutation():
    torch.manual_seed(1)
    f_s, f_t, r_s, r_t = (torch.randn(3, 4) for _ in range(4))
    loss = cross_domain_id_loss(f_s, f_t, r_s, r_t, 1.0)
    swapped = cross_domain_id_loss(f_s, f_t, r_s.flip(0), r_t, 1.0)
    assert loss.item() == pytest.approx(reference_cid(f_s, f_t, r_s, r_t, 1.0), rel=1e-5)
    assert swapped.item() != pytest.approx(loss.item(), rel=1e-3)
    with pytest.raises(ValueError):
        cross_domain_id_loss(f_s, f_t, r_s[:2], r_t, 1.0)


# ---------------------------------------------------------------- L_Domain (eq. 7)


def test_domain_loss_by_hand():
    # p(f^s) = softmax([0, ln 3])[1] = 3/4, the three others 1/2:
    # L = -(1/4)(ln 3/4 + 3 ln 1/2) = (0.287682 + 2.079442) / 4 = 0.591781
    zero = torch.zeros(1, 2)
    loss = domain_classification_loss(torch.tensor([[0.0, math.log(3)]]), zero, zero, zero)
    assert loss.item() == pytest.approx(0.591781, abs=1e-6)


def test_domain_loss_matches_loop_reference():
    torch.manual_seed(0)
    logits = [torch.randn(2, 2, requires_grad=True) for _ in range(4)]
    loss = domain_classification_loss(*logits)
    total = 0.0
    for k in range(2):
        rows = [t[k].tolist() for t in logits]  # [target logit, source logit]
        p = [math.exp(x[1]) / (math.exp(x[0]) + math.exp(x[1])) for x in rows]
        total += -(math.log(p[0]) + math.log(p[1]) + math.log(1 - p[2]) + math.log(1 - p[3])) / 4
    assert loss.item() == pytest.approx(total / 2, rel=1e-5)
    loss.backward()
    assert all(x.grad.abs().sum() > 0 for x in logits)


# ---------------------------------------------------------------- modules


def test_channel_attention_matches_eq3():
    torch.manual_seed(0)
    att = ChannelAttention(16, reduction=4)
    assert [p.shape for p in att.parameters()] == [(4, 16), (16, 4)]  # W0, W1, no bias
    x = torch.randn(2, 16, 3, 5)
    out = att(x)
    w0, w1 = att.w0.weight.detach().numpy(), att.w1.weight.detach().numpy()
    for b in range(2):
        fmap = x[b].numpy().reshape(16, -1)
        avg, mx = fmap.mean(1), fmap.max(1)
        z = w1 @ np.maximum(w0 @ avg, 0) + w1 @ np.maximum(w0 @ mx, 0)
        np.testing.assert_allclose(out[b].detach().numpy(), 1 / (1 + np.exp(-z)), rtol=1e-5)
    assert out.shape == (2, 16) and ((out > 0) & (out < 1)).all()
    assert ChannelAttention(4).w0.out_features == 1


@pytest.mark.parametrize("channels,widths", [(2048, [(2048, 256), (256, 32), (32, 2)]),
                                             (10, [(10, 1), (1, 1), (1, 2)])])
def test_domain_classifier_layers(channels, widths):
    clf = DomainClassifier(channels)
    linears = [m for m in clf.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == widths
    dropouts = [m for m in clf.modules() if isinstance(m, nn.Dropout)]
    assert [m.p for m in dropouts] == [0.1, 0.1]
    assert sum(isinstance(m, nn.ReLU) for m in clf.modules()) == 2
    clf.eval()
    x = torch.randn(5, channels)
    assert clf(x).shape == (5, 2)
    assert torch.equal(clf(x), clf(x))
