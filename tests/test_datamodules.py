import numpy as np
import pytest
import torch
from PIL import Image

from reidlab.datamodules import CrossDomainDataModule, ReIDDataModule, build_transforms
from reidlab.datasets import Record, ReIDImageDataset, read_image
from tests.conftest import write_market_tree

SIZE = dict(height=32, width=16, num_workers=0)


def test_transforms_shapes_and_normalisation():
    img = Image.fromarray(np.full((100, 40, 3), 124, dtype=np.uint8))
    test = build_transforms(64, 32, train=False)(img)
    assert test.shape == (3, 64, 32) and test.dtype == torch.float32
    # 124/255 normalised with the ImageNet statistics, channel by channel
    expected = (124 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225])
    assert torch.allclose(test.mean((1, 2)), expected, atol=1e-2)
    train = build_transforms(64, 32, train=True)(img)
    assert train.shape == (3, 64, 32)


def test_reid_datamodule_pk_batches(market_root):
    dm = ReIDDataModule("market1501", root=str(market_root.parent), num_ids=3, num_instances=2,
                        **SIZE)
    assert dm.num_classes == 6 and dm.num_query == 12
    images, pids, camids, indices = next(iter(dm.train_dataloader()))
    assert images.shape == (6, 3, 32, 16)
    assert sorted(np.bincount(pids.numpy()).tolist())[-3:] == [2, 2, 2]
    train = dm.data.train
    assert [train[i].pid for i in indices.tolist()] == pids.tolist()
    assert [train[i].camid for i in indices.tolist()] == camids.tolist()


def test_eval_loader_is_query_then_gallery(market_root):
    dm = ReIDDataModule("market1501", root=str(market_root), eval_batch_size=7, **SIZE)
    seen = torch.cat([b[3] for b in dm.val_dataloader()])
    assert seen.tolist() == list(range(len(dm.eval_records)))
    assert dm.eval_records[: dm.num_query] == dm.data.query


def test_cross_domain_batches_and_pseudo_labels(tmp_path):
    src = write_market_tree(tmp_path / "src" / "Market-1501", train_ids=5, seed=1)
    tgt = write_market_tree(tmp_path / "tgt" / "DukeMTMC-reID", train_ids=8, cams=4, seed=2)
    dm = CrossDomainDataModule("market1501", "dukemtmcreid", source_root=str(src),
                               target_root=str(tgt), num_ids=2, num_instances=2, **SIZE)
    assert dm.num_classes == 5
    batch, _, _ = next(iter(dm.train_dataloader()))
    assert set(batch) == {"source", "target"}
    assert (batch["target"][1] == -1).all()  # no labels yet: the target's ids never leak
    assert dm.eval_data is dm.target_data and dm.num_query == len(dm.target_data.query)

    n = len(dm.target_data.train)
    labels = np.arange(n) % 4
    labels[:5] = -1
    dm.set_pseudo_labels(labels)
    loader = dm.train_dataloader()
    for batch, _, _ in loader:
        _, pids, _, idx = batch["target"]
        assert pids.tolist() == labels[idx.numpy()].tolist()
        assert (pids >= 0).all() and len(set(pids.tolist())) == 2

    # resume: pseudo-labels travel in the datamodule state
    fresh = CrossDomainDataModule("market1501", "dukemtmcreid", source_root=str(src),
                                  target_root=str(tgt), **SIZE)
    fresh.load_state_dict(dm.state_dict())
    assert np.array_equal(fresh.pseudo_labels, labels)
    with pytest.raises(ValueError, match="pseudo-labels for"):
        dm.set_pseudo_labels(labels[:-1])


def test_all_outliers_falls_back_to_unlabelled_batches(market_root):
    dm = CrossDomainDataModule("market1501", "market1501", source_root=str(market_root),
                               target_root=str(market_root), num_ids=2, num_instances=2, **SIZE)
    dm.set_pseudo_labels(np.full(len(dm.target_data.train), -1))
    batch, _, _ = next(iter(dm.train_dataloader()))
    assert (batch["target"][1] == -1).all() and len(batch["target"][1]) == 4


def test_unsupervised_setting_per_camera_batches(market_root):
    dm = CrossDomainDataModule(None, "market1501", target_root=str(market_root),
                               target_sampler="per_camera", num_per_camera=2, **SIZE)
    assert dm.num_classes == 0
    batch, _, _ = next(iter(dm.train_dataloader()))
    assert set(batch) == {"target"}
    assert batch["target"][2].tolist() == [0, 0, 1, 1, 2, 2]


def test_unknown_dataset_and_sampler():
    with pytest.raises(ValueError, match="unknown dataset 'market'"):
        _ = ReIDDataModule("market", root=".").data
    with pytest.raises(ValueError, match="target_sampler"):
        CrossDomainDataModule(target_sampler="nope")


def test_corrupt_image_error_names_the_file(tmp_path):
    bad = tmp_path / "0001_c1s1_000001_00.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(OSError, match=str(bad)):
        read_image(str(bad))
    dataset = ReIDImageDataset([Record(str(bad), 0, 0)])
    with pytest.raises(OSError, match="cannot read image"):
        dataset[0]


def test_source_only_batches_for_direct_transfer(market_root):
    dm = CrossDomainDataModule("market1501", "market1501", source_root=str(market_root),
                               target_root=str(market_root), train_target=False,
                               num_ids=2, num_instances=2, **SIZE)
    batch, _, _ = next(iter(dm.train_dataloader()))
    assert set(batch) == {"source"}
    with pytest.raises(ValueError, match="without a source"):
        CrossDomainDataModule(None, "market1501", train_target=False)


def test_bad_images_are_all_listed_at_setup(tmp_path):
    from reidlab.datasets.base import DatasetFormatError

    top = write_market_tree(tmp_path / "Market-1501")
    train = sorted((top / "bounding_box_train").glob("*.jpg"))
    train[0].write_bytes(b"")                               # zero bytes
    train[1].write_bytes(train[1].read_bytes()[:200])        # truncated JPEG
    (top / "query" / "0101_c1s1_000000_00.jpg").write_text("not an image")
    dm = ReIDDataModule("market1501", root=str(top), **SIZE)
    with pytest.raises(DatasetFormatError, match="3 of the .* images of market1501") as err:
        dm.prepare_data()
    for path in (train[0], train[1], top / "query" / "0101_c1s1_000000_00.jpg"):
        assert str(path) in str(err.value)
    assert str(train[2]) not in str(err.value)
    ReIDDataModule("market1501", root=str(top), verify_images=False, **SIZE).prepare_data()
    cross = CrossDomainDataModule("market1501", "market1501", source_root=str(top),
                                  target_root=str(top), **SIZE)
    with pytest.raises(DatasetFormatError, match="cannot be read"):
        cross.prepare_data()
    # at load time, the error is short and names the file
    with pytest.raises(OSError, match=train[1].name):
        read_image(str(train[1]))


def test_cross_domain_domain_pair_batches_carry_positives_and_pseudo_labels(tmp_path,
                                                                          monkeypatch):
    import numpy as np

    from reidlab.datamodules import CrossDomainDataModule

    monkeypatch.setenv("REIDLAB_CACHE", str(tmp_path))
    tiny = {"num_train_ids": 4, "num_test_ids": 3, "images_per_id": 4, "height": 32,
            "width": 16}
    dm = CrossDomainDataModule(source_kwargs=tiny, target_kwargs=tiny, height=32, width=16,
                               num_workers=0, batches="domain_pairs", pair_batch_size=3,
                               iters_per_epoch=20, batch_type_weights=(1, 0, 0, 0))
    n_source = len(dm.source_data.train)
    batch = next(iter(dm.train_dataloader()))[0]["pairs"]
    images, pids, camids, idx, domain, positives = batch
    assert images.shape == positives.shape == (6, 3, 32, 16)
    assert (domain == 0).all() and (idx < n_source).all()  # only source-source allowed
    labels = np.arange(len(dm.target_data.train)) % 3
    labels[0] = -1
    dm.set_pseudo_labels(labels)
    dm.set_batch_type_weights((0, 1, 0, 0))
    state = dm.state_dict()
    fresh = CrossDomainDataModule(source_kwargs=tiny, target_kwargs=tiny, height=32, width=16,
                                  num_workers=0, batches="domain_pairs", pair_batch_size=3,
                                  iters_per_epoch=20)
    fresh.load_state_dict(state)  # a resumed run keeps labels and batch types
    for batch in [b[0]["pairs"] for b in fresh.train_dataloader()]:
        _, pids, _, idx, domain, _ = batch
        assert (domain == 1).all() and (idx >= n_source).all()
        assert (pids.numpy() == labels[idx.numpy() - n_source]).all() and (pids >= 0).all()


def test_transforms_resize_with_the_requested_filter():
    import pytest
    import torch
    from PIL import Image
    from torchvision.transforms import v2

    from reidlab.datamodules import build_transforms

    img = Image.fromarray((torch.rand(40, 20, 3) * 255).byte().numpy())
    for name, mode in (("bilinear", v2.InterpolationMode.BILINEAR),
                       ("bicubic", v2.InterpolationMode.BICUBIC)):
        pipeline = build_transforms(16, 8, train=False, interpolation=name)
        resize = next(t for t in pipeline.transforms if isinstance(t, v2.Resize))
        assert resize.interpolation == mode
        ref = v2.functional.resize(v2.functional.pil_to_tensor(img), [16, 8],
                                   interpolation=mode, antialias=True)
        out = pipeline(img)
        mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
        std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
        torch.testing.assert_close(out, (ref.float() / 255 - mean) / std)
    with pytest.raises(ValueError, match="interpolation"):
        build_transforms(16, 8, interpolation="nearest")
