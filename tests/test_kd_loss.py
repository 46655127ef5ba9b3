"""The logit-distillation loss (lion_distill.train.kd_loss) against the definitions it claims: GKD's
generalized JSD with beta 0 the forward KL(teacher || student) and beta 1 the reverse KL(student ||
teacher), in the limits too (where peers have shipped the two swapped); the top-k form equal to the
full one when k is the vocabulary; the tail bucket a probability; ignored positions inert."""

import math

import pytest
import torch
import torch.nn.functional as F

from lion_distill.train.kd_loss import KDLoss, generalized_jsd, kd_token_loss, sparse_pair, token_divergence, with_tail

V = 12


def distributions(n: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, V, generator=g) * 2, torch.randn(n, V, generator=g) * 2  # student logits, teacher logits


def by_hand_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) = sum_x P(x) (log P(x) - log Q(x)), straight from the definition."""
    p, q = F.softmax(p_logits.double(), -1), F.softmax(q_logits.double(), -1)
    return (p * (p.log() - q.log())).sum(-1)


def full_topk(teacher_logits: torch.Tensor, k: int = V) -> tuple[torch.Tensor, torch.Tensor]:
    logprobs = F.log_softmax(teacher_logits, -1)
    values, ids = logprobs.topk(k, dim=-1)
    return ids, values


def test_the_ends_of_beta_are_the_forward_and_the_reverse_kl_by_their_definitions():
    student, teacher = distributions()
    ids, logprobs = full_topk(teacher)
    no_tail = dict(tail=False)
    forward = token_divergence(student, ids, logprobs, KDLoss("forward_kl", **no_tail))
    reverse = token_divergence(student, ids, logprobs, KDLoss("reverse_kl", **no_tail))
    torch.testing.assert_close(forward.double(), by_hand_kl(teacher, student), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reverse.double(), by_hand_kl(student, teacher), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(forward, reverse)  # the two directions differ on these distributions
    torch.testing.assert_close(token_divergence(student, ids, logprobs, KDLoss("jsd", beta=0.0, **no_tail)), forward)
    torch.testing.assert_close(token_divergence(student, ids, logprobs, KDLoss("jsd", beta=1.0, **no_tail)), reverse)


def test_inside_the_interval_beta_tends_to_the_same_ends():
    """GKD: jsd(beta) / beta -> KL(P || Q) as beta -> 0 and jsd(beta) / (1 - beta) -> KL(Q || P) as
    beta -> 1. An implementation with the mixture or the weights swapped tends to the other KL."""
    student, teacher = distributions(seed=1)
    s, t = F.log_softmax(student.double(), -1), F.log_softmax(teacher.double(), -1)
    eps = 1e-4
    torch.testing.assert_close(generalized_jsd(s, t, eps) / eps, by_hand_kl(teacher, student), rtol=2e-3, atol=1e-5)
    torch.testing.assert_close(generalized_jsd(s, t, 1 - eps) / eps, by_hand_kl(student, teacher), rtol=2e-3, atol=1e-5)
    # beta = 0.5 is the symmetric Jensen-Shannon divergence, bounded by log 2.
    half = generalized_jsd(s, t, 0.5)
    torch.testing.assert_close(half, generalized_jsd(t, s, 0.5))
    assert bool((half >= 0).all() and (half <= math.log(2) + 1e-9).all())
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(s, t, 1.5)


@pytest.mark.parametrize("divergence, beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.1), ("jsd", 0.7)])
def test_top_k_over_the_whole_vocabulary_without_the_tail_is_the_full_divergence(divergence, beta):
    student, teacher = distributions(seed=2)
    ids, logprobs = full_topk(teacher)
    sparse = token_divergence(student, ids, logprobs, KDLoss(divergence, beta=beta, tail=False))
    full = generalized_jsd(F.log_softmax(student, -1), F.log_softmax(teacher, -1), KDLoss(divergence, beta).beta_used)
    torch.testing.assert_close(sparse, full, atol=1e-5, rtol=1e-5)
    # With the tail on, the bucket holds no mass here: the same within the floor.
    tailed = token_divergence(student, ids, logprobs, KDLoss(divergence, beta=beta, tail=True))
    torch.testing.assert_close(tailed, full, atol=1e-4, rtol=1e-4)


def test_the_tail_bucket_is_never_negative_mass():
    # Top-k logprobs as an engine returns them, rounded so that they sum to more than 1 (or to all of it).
    over = torch.log(torch.tensor([[0.6, 0.3, 0.1000001], [0.5, 0.5, 0.0], [0.2, 0.1, 0.05]]))
    tailed = with_tail(over)
    assert bool(torch.isfinite(tailed[:, -1]).all())
    mass = tailed.exp()
    assert bool((mass[:, -1] > 0).all()) and bool((mass[:, -1] <= 1).all())
    assert mass[2, -1].item() == pytest.approx(0.65, abs=1e-6)  # what the top 3 leave out
    student, teacher = sparse_pair(torch.randn(3, V), torch.tensor([[0, 1, 2]] * 3), over, KDLoss())
    for dist in (student, teacher):
        torch.testing.assert_close(dist.exp().sum(-1), torch.ones(3), atol=1e-6, rtol=0)


def test_positions_with_an_ignored_label_contribute_nothing():
    torch.manual_seed(3)
    logits = torch.randn(2, 4, V, requires_grad=True)
    labels = torch.tensor([[-100, 3, 5, -100], [-100, -100, 1, 2]])
    ids = torch.randint(0, V, (2, 4, 3))
    logprobs = torch.log_softmax(torch.randn(2, 4, 3), -1) - 0.5
    for loss in (KDLoss(), KDLoss("jsd", beta=0.3, kd_coef=0.5)):
        base = kd_token_loss(logits, labels, ids, logprobs, loss)
        noisy_logits, noisy_ids, noisy_lp = logits.detach().clone(), ids.clone(), logprobs.clone()
        mask = labels == -100
        noisy_logits[mask] = torch.randn(int(mask.sum()), V) * 10
        noisy_ids[mask] = 0
        noisy_lp[mask] = torch.nan  # garbage where nothing is learnt
        torch.testing.assert_close(kd_token_loss(noisy_logits, labels, noisy_ids, noisy_lp, loss), base.detach())
        (grad,) = torch.autograd.grad(base, logits)
        assert bool((grad[mask] == 0).all()) and bool((grad[~mask] != 0).any())


def test_the_loss_is_a_sum_over_the_given_token_count_and_mixes_in_cross_entropy():
    torch.manual_seed(4)
    logits, labels = torch.randn(1, 3, V), torch.tensor([[-100, 4, 7]])
    ids, logprobs = full_topk(torch.randn(1, 3, V), k=5)
    kd = kd_token_loss(logits, labels, ids, logprobs, KDLoss())
    torch.testing.assert_close(kd_token_loss(logits, labels, ids, logprobs, KDLoss(), torch.tensor(4.0)), kd * 2 / 4)
    ce = F.cross_entropy(logits[0, 1:], labels[0, 1:])
    mixed = kd_token_loss(logits, labels, ids, logprobs, KDLoss(kd_coef=0.25))
    torch.testing.assert_close(mixed, 0.25 * kd + 0.75 * ce)


def test_a_position_without_a_teacher_distribution_learns_its_token_by_cross_entropy():
    torch.manual_seed(5)
    logits, labels = torch.randn(1, 4, V), torch.tensor([[-100, 4, 7, 2]])
    ids, logprobs = full_topk(torch.randn(1, 4, V), k=5)
    logprobs[0, 1] = torch.nan  # an earlier turn of a conversation: the teacher was not asked for it
    loss = kd_token_loss(logits, labels, ids, logprobs, KDLoss())
    ce = F.cross_entropy(logits[0, 1:2], labels[0, 1:2], reduction="sum")
    rest = token_divergence(logits[0, 2:], ids[0, 2:], logprobs[0, 2:], KDLoss()).sum()
    torch.testing.assert_close(loss, (ce + rest) / 3)
