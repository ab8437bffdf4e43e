import torch

from amoeba_search.finetune.losses import IGNORE, balance, distill_loss, lm_loss, teacher_targets
from amoeba_search.finetune.sampling import sandwich
from amoeba_search.shapes import ModelDims, SearchSpace


def test_balancing_equalizes_magnitudes_and_keeps_gradient_directions():
    torch.manual_seed(0)
    w = torch.randn(5, requires_grad=True)
    x = torch.randn(8, 5)
    reference = (x @ w).pow(2).mean()                     # the largest subnet's loss
    small = 30.0 * (x[:4] @ w - 1).abs().mean()           # another subnet's loss, a very different size
    balanced = balance(small, reference)
    assert torch.isclose(balanced, reference.detach())    # same magnitude
    (g_raw,) = torch.autograd.grad(small, w, retain_graph=True)
    (g_bal,) = torch.autograd.grad(balanced, w)
    cosine = torch.nn.functional.cosine_similarity(g_raw, g_bal, dim=0)
    assert torch.isclose(cosine, torch.tensor(1.0), atol=1e-6)           # same direction
    assert torch.isclose(g_bal.norm() / g_raw.norm(), reference.detach() / small.detach(), rtol=1e-5)


def test_distillation_is_zero_gradient_at_the_teacher_and_ignores_unlabelled_positions():
    torch.manual_seed(0)
    teacher = torch.randn(2, 6, 11)
    labels = torch.randint(0, 11, (2, 6))
    student = teacher.clone().requires_grad_(True)
    loss = distill_loss(student, teacher, labels)
    (grad,) = torch.autograd.grad(loss, student)
    assert grad.abs().max() < 1e-6                        # soft CE is minimal when student == teacher
    masked = labels.clone()
    masked[:, 1:4] = IGNORE
    changed = student.detach().clone()
    changed[:, 0:3] += 5.0                                # positions 0..2 predict labels 1..3: all ignored
    assert torch.isclose(distill_loss(changed, teacher, masked), distill_loss(student.detach(), teacher, masked))
    assert torch.isclose(lm_loss(changed, masked), lm_loss(student.detach(), masked))


def test_sandwich_has_largest_smallest_and_distinct_random_shapes_reproducibly():
    space = SearchSpace.default(ModelDims(8, 32, 64, 4, 2, 8), min_depth=4)
    shapes = sandwich(space, 3, seed=1, step=7)
    assert shapes[0] == space.largest() and shapes[1] == space.smallest()
    assert len(shapes) == 5 and len(set(shapes)) == 5 and all(s in space for s in shapes)
    assert sandwich(space, 3, seed=1, step=7) == shapes
    assert sandwich(space, 3, seed=1, step=8) != shapes


def test_teacher_targets_computed_once_give_the_same_loss_and_gradient():
    torch.manual_seed(0)
    teacher = torch.randn(2, 6, 11)
    labels = torch.randint(0, 11, (2, 6))
    labels[0, 2] = IGNORE
    student = torch.randn(2, 6, 11, requires_grad=True)
    direct = distill_loss(student, teacher, labels, temperature=2.0)
    shared = distill_loss(student, None, labels, temperature=2.0,
                          targets=teacher_targets(teacher, labels, temperature=2.0))
    assert torch.equal(direct, shared)
    assert torch.equal(*(torch.autograd.grad(loss, student)[0] for loss in (direct, shared)))
    assert teacher_targets(teacher, labels).shape == (2 * 5 - 1, 11)  # one scored position is ignored
