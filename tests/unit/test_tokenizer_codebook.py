"""k-means codebook initialisation and dead-code re-seeding."""

import numpy as np

from tokenizer.codebook import init_codebooks, kmeans, kmeans_plus_plus, reseed_dead_codes


def _blobs(rng, centers, per=40, spread=0.05):
    return np.concatenate([c + spread * rng.standard_normal((per, len(c))) for c in centers])


def test_kmeans_plus_plus_picks_distinct_data_points():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 3))
    centers = kmeans_plus_plus(x, 10, rng)
    assert centers.shape == (10, 3)
    rows = {tuple(r) for r in x}
    assert all(tuple(c) in rows for c in centers)
    assert len({tuple(c) for c in centers}) == 10


def test_kmeans_finds_the_centroids_of_separated_clusters():
    rng = np.random.default_rng(1)
    true = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = _blobs(rng, true)
    found = kmeans(x, 4, iters=5, rng=rng)
    for c in true:
        assert np.min(np.linalg.norm(found - c, axis=1)) < 0.1


def test_kmeans_with_fewer_points_than_codes_gives_distinct_codes():
    rng = np.random.default_rng(2)
    centers = kmeans(rng.standard_normal((5, 3)), 8, iters=3, rng=rng)
    assert centers.shape == (8, 3)
    assert len({tuple(np.round(c, 9)) for c in centers}) == 8


def test_init_codebooks_is_residual_kmeans_with_the_level_sizes():
    rng = np.random.default_rng(3)
    x = _blobs(rng, np.array([[0.0, 0.0], [20.0, 0.0]]), per=50, spread=1.0)
    books = init_codebooks(x, (2, 4), iters=5, rng=rng)
    assert [b.shape for b in books] == [(2, 2), (4, 2)]
    assert sorted(np.round(books[0][:, 0] / 20.0).tolist()) == [0.0, 1.0]
    # level 2 quantizes residuals around zero, not the raw points
    assert np.all(np.abs(books[1]) < 5.0)


def test_reseed_replaces_only_dead_codes_with_batch_residuals():
    rng = np.random.default_rng(4)
    book = np.arange(12, dtype=np.float32).reshape(6, 2)
    usage = np.array([3, 0, 1, 0, 0, 7])
    residuals = rng.standard_normal((20, 2)).astype(np.float32)
    new, dead = reseed_dead_codes(book, usage, residuals, rng)
    np.testing.assert_array_equal(dead, [1, 3, 4])
    np.testing.assert_array_equal(new[[0, 2, 5]], book[[0, 2, 5]])
    rows = {tuple(r) for r in residuals}
    assert all(tuple(new[i]) in rows for i in dead)
    assert len({tuple(new[i]) for i in dead}) == 3


def test_reseed_without_dead_codes_changes_nothing():
    rng = np.random.default_rng(5)
    book = np.ones((3, 2), np.float32)
    new, dead = reseed_dead_codes(book, np.array([1, 2, 3]), np.zeros((4, 2)), rng)
    assert dead.size == 0
    np.testing.assert_array_equal(new, book)
