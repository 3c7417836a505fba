"""Tests of the procedural synthetic re-ID domains (reidlab.datasets.synthetic)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidlab.datasets import synthetic
from reidlab.datasets.market import Market1501, parse_market_folder
from reidlab.datasets.synthetic import (
    PID_CAPACITY,
    SYNTHETIC_DOMAINS,
    DomainStyle,
    SyntheticReID,
    generate_domain,
    render_person,
    sample_identity,
    save_preview,
)

TINY = dict(num_train_ids=6, num_test_ids=5, images_per_id=6, height=64, width=32)


def _files(top: Path) -> list[str]:
    return sorted(str(p.relative_to(top)) for p in top.rglob("*.jpg"))


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_presets() -> None:
    assert {"mall", "street"} <= set(SYNTHETIC_DOMAINS)
    assert all(isinstance(s, DomainStyle) for s in SYNTHETIC_DOMAINS.values())
    assert SYNTHETIC_DOMAINS["mall"].num_cameras == 6
    assert SYNTHETIC_DOMAINS["street"].num_cameras == 5
    assert SYNTHETIC_DOMAINS["mall"].scene == "indoor"
    assert SYNTHETIC_DOMAINS["street"].scene == "outdoor"


def test_unknown_domain(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mall.*street"):
        generate_domain("beach", tmp_path, **TINY)
    with pytest.raises(ValueError, match="known domains"):
        SyntheticReID("beach", tmp_path, **TINY)


def test_bad_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="images_per_id"):
        generate_domain("mall", tmp_path, num_train_ids=2, num_test_ids=2, images_per_id=3)


def test_deterministic(tmp_path: Path) -> None:
    a = generate_domain("street", tmp_path / "a", **TINY, seed=3)
    b = generate_domain("street", tmp_path / "b", **TINY, seed=3)
    c = generate_domain("street", tmp_path / "c", **TINY, seed=4)
    assert a.name == b.name != c.name  # the folder name encodes the parameters
    files = _files(a)
    assert files and files == _files(b)
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    # another seed: other images (names may coincide by chance, contents must not)
    common = set(files) & set(_files(c))
    assert len(common) < len(files)
    train_a = sorted((a / "bounding_box_train").iterdir())
    train_c = sorted((c / "bounding_box_train").iterdir())
    assert len(train_a) == len(train_c)
    diffs = [np.abs(_pixels(x).astype(int) - _pixels(y)).mean()
             for x, y in zip(train_a, train_c, strict=True)]
    assert min(diffs) > 5


def test_render_person_deterministic_and_sized() -> None:
    x = render_person("mall", 10001, 2, index=1, height=96, width=48)
    y = render_person("mall", 10001, 2, index=1, height=96, width=48)
    z = render_person("mall", 10001, 2, index=2, height=96, width=48)
    assert x.shape == (96, 48, 3) and x.dtype == np.uint8
    assert np.array_equal(x, y)
    assert not np.array_equal(x, z)


def test_layout_counts(tmp_path: Path) -> None:
    n_train, n_test, per_id = TINY["num_train_ids"], TINY["num_test_ids"], TINY["images_per_id"]
    for domain, style in SYNTHETIC_DOMAINS.items():
        data = SyntheticReID(domain, tmp_path, **TINY)
        market = Market1501(data.root)  # the real-data parser gives exactly the same records
        assert (market.train, market.query, market.gallery) == (data.train, data.query,
                                                                 data.gallery)
        assert data.root.parent == tmp_path and data.root.name.startswith(f"{domain}-")
        # train: relabelled ids, all images
        assert data.num_train_pids == n_train
        assert sorted({r.pid for r in data.train}) == list(range(n_train))
        assert len(data.train) == n_train * per_id
        # cameras: 0-based, as many as the preset has
        cams = {r.camid for r in data.train + data.query + data.gallery}
        assert cams <= set(range(style.num_cameras))
        assert len(cams) >= style.num_cameras - 1
        # ids of the domain's own range, train and test disjoint
        test_ids = {r.pid for r in data.query}
        gallery_ids = {r.pid for r in data.gallery} - {0}
        assert len(test_ids) == n_test and gallery_ids == test_ids
        assert all(style.pid_base < p <= style.pid_base + PID_CAPACITY for p in test_ids)
        assert len(data.query) + len(data.gallery) - sum(r.pid == 0 for r in data.gallery) \
            == n_test * per_id
        # query: exactly one image per test id and camera where it appears
        pairs = [(r.pid, r.camid) for r in data.query]
        assert len(pairs) == len(set(pairs))
        seen = {(r.pid, r.camid) for r in data.query + data.gallery if r.pid != 0}
        assert set(pairs) == seen
        # every query has a gallery match from another camera
        for q in data.query:
            assert any(g.pid == q.pid and g.camid != q.camid for g in data.gallery), q
        # distractors kept, junk present on disk but dropped by the parser
        assert sum(r.pid == 0 for r in data.gallery) >= 2
        raw = parse_market_folder(data.root / "bounding_box_test", drop_junk=False)
        assert sum(r.pid == -1 for r in raw) >= 2
        assert all(r.pid != -1 for r in data.gallery)
        # images have the requested size
        assert Image.open(data.train[0].path).size == (TINY["width"], TINY["height"])


def test_domains_disjoint(tmp_path: Path) -> None:
    styles = list(SYNTHETIC_DOMAINS.values())
    ranges = [range(s.pid_base + 1, s.pid_base + PID_CAPACITY + 1) for s in styles]
    for r1, r2 in itertools.combinations(ranges, 2):
        assert not set(r1) & set(r2)
    datasets = [SyntheticReID(name, tmp_path, **TINY) for name in SYNTHETIC_DOMAINS]
    test_ids = [{r.pid for r in d.query} for d in datasets]
    for a, b in itertools.combinations(test_ids, 2):
        assert not a & b
    pools = [{sample_identity(s, s.pid_base + 1 + k).signature() for k in range(50)}
             for s in styles]
    for a, b in itertools.combinations(pools, 2):
        assert not a & b
    assert all(len(p) == 50 for p in pools)  # identities within a domain differ too


def test_cache_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REIDLAB_CACHE", str(tmp_path / "cache"))
    first = SyntheticReID("mall", **TINY)
    top = first.root
    assert top.parent == tmp_path / "cache" / "synthetic"
    assert (top / synthetic.COMPLETE_MARKER).is_file()
    assert [p.name for p in top.parent.iterdir() if not p.name.endswith(".lock")] == [top.name]
    mtimes = {p: p.stat().st_mtime_ns for p in top.rglob("*.jpg")}

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the dataset was generated again")

    monkeypatch.setattr(synthetic, "_write_dataset", fail)
    second = SyntheticReID("mall", **TINY)
    assert second.root == top
    assert (second.train, second.query, second.gallery) == (first.train, first.query,
                                                            first.gallery)
    assert {p: p.stat().st_mtime_ns for p in top.rglob("*.jpg")} == mtimes
    with pytest.raises(AssertionError, match="generated again"):  # other parameters: new data
        SyntheticReID("mall", **{**TINY, "seed": 1})


def test_incomplete_folder_is_replaced(tmp_path: Path) -> None:
    name = synthetic.dataset_dir_name("street", **TINY)
    stale = tmp_path / name / "bounding_box_train"
    stale.mkdir(parents=True)
    (stale / "20001_c1s1_000001_00.jpg").write_bytes(b"half written")
    top = generate_domain("street", tmp_path, **TINY)
    assert top == tmp_path / name
    assert (top / synthetic.COMPLETE_MARKER).is_file()
    assert not (stale / "20001_c1s1_000001_00.jpg").exists() or \
        (stale / "20001_c1s1_000001_00.jpg").read_bytes() != b"half written"
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def _style_features(img: np.ndarray) -> np.ndarray:
    """Colour temperature (R - B), saturation and contrast of an image."""
    x = img.astype(np.float32) / 255.0
    return np.array([(x[..., 0] - x[..., 2]).mean(), (x.max(2) - x.min(2)).mean(),
                     x.mean(2).std()])


def test_domain_gap_in_image_statistics() -> None:
    centroids: dict[tuple[str, int], np.ndarray] = {}
    for name, style in SYNTHETIC_DOMAINS.items():
        for cam in range(style.num_cameras):
            feats = [_style_features(render_person(name, style.pid_base + 1 + i, cam, index=i,
                                                   height=64, width=32)) for i in range(12)]
            centroids[name, cam] = np.mean(feats, axis=0)
    names = list(SYNTHETIC_DOMAINS)
    within = max(np.linalg.norm(centroids[a] - centroids[b])
                 for a, b in itertools.combinations(centroids, 2) if a[0] == b[0])
    domain_means = {n: np.mean([v for k, v in centroids.items() if k[0] == n], axis=0)
                    for n in names}
    across = min(np.linalg.norm(domain_means[a] - domain_means[b])
                 for a, b in itertools.combinations(names, 2))
    # every pair of cameras of one domain is closer than the two domains' centres (by a
    # smaller margin since the v2 presets: most of the gap is in who the people are)
    assert across > 1.1 * within, (across, within)
    mall, street = domain_means["mall"], domain_means["street"]
    assert mall[0] > street[0] + 0.1  # warmer
    assert mall[1] > 2 * street[1]  # more saturated
    assert mall[2] > 1.3 * street[2]  # more contrast


def test_identities_learnable_by_colour(tmp_path: Path) -> None:
    """Even a colour-histogram nearest neighbour re-identifies mall people far above chance."""
    data = SyntheticReID("mall", tmp_path, num_train_ids=2, num_test_ids=20, images_per_id=6,
                         height=64, width=32)

    def hist(path: str) -> np.ndarray:
        x = _pixels(Path(path))[16:56, 8:24].reshape(-1, 3) // 64  # the body's centre
        h = np.bincount(x[:, 0] * 16 + x[:, 1] * 4 + x[:, 2], minlength=64).astype(float)
        return h / h.sum()

    gallery = [g for g in data.gallery if g.pid > 0]
    g_feats = np.stack([hist(g.path) for g in gallery])
    hits = []
    for q in data.query:
        keep = [i for i, g in enumerate(gallery) if not (g.pid == q.pid and g.camid == q.camid)]
        dist = np.abs(g_feats[keep] - hist(q.path)).sum(1)
        hits.append(gallery[keep[int(np.argmin(dist))]].pid == q.pid)
    assert np.mean(hits) > 5 / 20  # chance is 1 / 20


def test_save_preview(tmp_path: Path) -> None:
    path = save_preview(["mall", "street"], tmp_path / "preview.png", num_ids=2, height=32,
                        width=16)
    img = Image.open(path)
    assert img.size == (16 * 6 + 8 + 16 * 5, 2 * 32)


def test_concurrent_generation(tmp_path: Path) -> None:
    """Several workers asking at once (like DDP ranks) all get one complete dataset."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:
        tops = list(pool.map(lambda _: generate_domain("mall", tmp_path, **TINY), range(3)))
    assert len(set(tops)) == 1
    top = tops[0]
    assert (top / synthetic.COMPLETE_MARKER).is_file()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [top.name]
    assert len(SyntheticReID("mall", tmp_path, **TINY).train) == 6 * 6


def test_tracklets_share_their_state_and_frames_differ(tmp_path: Path) -> None:
    """Frames of one tracklet (one person, one camera) are far closer to each other than
    images of the same person and camera from different tracklets; length 1 makes every
    image independent."""
    import dataclasses

    def frames(length: int) -> dict[tuple[int, int], list[np.ndarray]]:
        style = dataclasses.replace(SYNTHETIC_DOMAINS["mall"], tracklet_length=length)
        data = SyntheticReID(style, tmp_path / str(length), num_train_ids=12, num_test_ids=2,
                             images_per_id=16, height=64, width=32)
        groups: dict[tuple[int, int], list[np.ndarray]] = {}
        for r in data.train:
            groups.setdefault((r.pid, r.camid), []).append(_pixels(Path(r.path)).astype(float))
        return groups

    def gaps(groups, length):
        within, across = [], []
        for imgs in groups.values():
            for i, j in itertools.combinations(range(len(imgs)), 2):
                d = np.abs(imgs[i] - imgs[j]).mean()
                (within if i // length == j // length else across).append(d)
        return np.mean(within), np.mean(across)

    within, across = gaps(frames(4), 4)
    assert within < 0.6 * across, (within, across)
    flat_within, flat_across = gaps(frames(1), 4)  # the same split without tracklets
    assert abs(flat_within - flat_across) < 0.15 * flat_across, (flat_within, flat_across)
    assert all(len({a.tobytes() for a in imgs}) == len(imgs) for imgs in frames(4).values())
