"""Monotonic alignment search: recovers known paths, matches brute force, handles padding and edge cases."""

import itertools

import numpy as np
import pytest
import torch

from edgeflow.models.alignment import durations, maximum_path


def path_from_durations(durs, t_text, t_mel):
    """[t_text, t_mel] hard path of integer durations (placed top-left)."""
    p = torch.zeros(t_text, t_mel)
    t = 0
    for i, d in enumerate(durs):
        p[i, t:t + d] = 1
        t += d
    return p


def random_durations(rng, n_text, n_mel):
    """n_text positive ints summing to n_mel."""
    cuts = np.sort(rng.choice(np.arange(1, n_mel), size=n_text - 1, replace=False)) if n_text > 1 else []
    edges = np.concatenate([[0], cuts, [n_mel]]).astype(int)
    return list(np.diff(edges))


def planted(path, rng, margin=2.0):
    """log_p with the path's cells ``margin`` above noise in [-1, 0]: the planted path is the unique best."""
    noise = torch.from_numpy(rng.uniform(-1.0, 0.0, size=path.shape)).float()
    return noise + margin * path


def brute_force(log_p, n_text, n_mel):
    """Best monotonic path by enumerating every split of n_mel frames into n_text positive durations."""
    best, best_d = -np.inf, None
    for cuts in itertools.combinations(range(1, n_mel), n_text - 1):
        d = np.diff([0, *cuts, n_mel])
        p = path_from_durations(d, n_text, n_mel)
        score = float((log_p[:n_text, :n_mel] * p).sum())
        if score > best:
            best, best_d = score, d
    return best_d


def test_recovers_planted_paths_batched_with_padding():
    rng = np.random.default_rng(0)
    sizes = [(5, 17), (1, 9), (8, 8), (3, 20)]
    t_text, t_mel = 8, 20
    log_p = torch.zeros(len(sizes), t_text, t_mel)
    mask = torch.zeros_like(log_p)
    truth = torch.zeros_like(log_p)
    for b, (nt, nm) in enumerate(sizes):
        p = path_from_durations(random_durations(rng, nt, nm), nt, nm)
        truth[b, :nt, :nm] = p
        log_p[b, :nt, :nm] = planted(p, rng)
        log_p[b, nt:] = 50.0                       # padding rows/columns look attractive: must be ignored
        log_p[b, :, nm:] = 50.0
        mask[b, :nt, :nm] = 1
    path = maximum_path(log_p, mask)
    assert torch.equal(path, truth)
    assert torch.equal(durations(path)[0, :5].long().sum(), torch.tensor(17))


def test_matches_brute_force_on_random_scores():
    rng = np.random.default_rng(1)
    for _ in range(20):
        nt, nm = int(rng.integers(1, 5)), int(rng.integers(5, 10))
        log_p = torch.from_numpy(rng.normal(size=(1, nt, nm))).float()
        path = maximum_path(log_p, torch.ones_like(log_p))[0]
        assert path.sum(0).eq(1).all()                          # every frame to exactly one token
        d = durations(path).long().numpy()
        assert (d >= 1).all() and d.sum() == nm
        assert list(d) == list(brute_force(log_p[0], nt, nm))


def test_equal_lengths_is_the_diagonal():
    log_p = torch.randn(2, 6, 6) * 10
    path = maximum_path(log_p, torch.ones_like(log_p))
    assert torch.equal(path, torch.eye(6).expand(2, 6, 6))


def test_one_token_takes_every_frame():
    log_p = torch.randn(1, 1, 11)
    assert torch.equal(maximum_path(log_p, torch.ones_like(log_p)), torch.ones(1, 1, 11))


def test_not_a_copy_of_the_argmax():
    """A greedy per-frame argmax is non-monotonic here; MAS must stay monotonic and cover every token."""
    log_p = torch.tensor([[[0.0, 5.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 5.0]]])
    path = maximum_path(log_p, torch.ones_like(log_p))[0]
    idx = path.argmax(0)
    assert (idx[1:] >= idx[:-1]).all() and set(idx.tolist()) == {0, 1, 2}


def test_dtype_device_no_grad_and_refusals():
    log_p = torch.randn(1, 3, 5, dtype=torch.float64, requires_grad=True)
    path = maximum_path(log_p, torch.ones(1, 3, 5))
    assert path.dtype == torch.float64 and not path.requires_grad
    with pytest.raises(ValueError, match="at least as many frames"):
        maximum_path(torch.zeros(1, 4, 3), torch.ones(1, 4, 3))
    with pytest.raises(ValueError, match="same shape"):
        maximum_path(torch.zeros(1, 4, 3), torch.ones(1, 4, 4))
    empty = torch.zeros(2, 3, 5)
    mask = torch.zeros(2, 3, 5)
    mask[0] = 1
    out = maximum_path(empty, mask)
    assert out[1].sum() == 0 and out[0].sum() == 5
