"""Dataset parsers on tiny folder trees written in ``tmp_path``.

Parsers only read names and check that files exist, so empty files stand in for images.
Every expected record below is derived from the names written into the tree.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from reidlab.datasets.base import DatasetFormatError, Record
from reidlab.datasets.custom import CustomReID
from reidlab.datasets.market import CUHK03NP, DukeMTMCreID, Market1501
from reidlab.datasets.msmt17 import MSMT17

# A parser that warns where it should not fails the test; pytest.warns still catches.
pytestmark = pytest.mark.filterwarnings("error::UserWarning")


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def as_tuples(records: list[Record]) -> list[tuple[str, int, int]]:
    """(file name, pid, camid) sorted, to compare with what the tree holds."""
    return sorted((Path(r.path).name, r.pid, r.camid) for r in records)


# ---------------------------------------------------------------------------------------
# Market-1501 layout
# ---------------------------------------------------------------------------------------

MARKET_TRAIN = ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg",
                "0007_c3s3_064169_01.jpg", "0010_c6s4_002452_02.jpg"]
MARKET_QUERY = ["0002_c1s1_001051_00.jpg", "0007_c2s3_070952_00.jpg"]
MARKET_GALLERY = ["0002_c3s1_000551_01.jpg", "0007_c5s3_065187_02.jpg",
                  "0000_c1s1_000000_00.jpg", "-1_c1s1_000401_03.jpg"]


def make_market(top: Path, train=MARKET_TRAIN, query=MARKET_QUERY, gallery=MARKET_GALLERY,
                ) -> Path:
    for folder, names in (("bounding_box_train", train), ("query", query),
                          ("bounding_box_test", gallery)):
        (top / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            touch(top / folder / name)
        touch(top / folder / "Thumbs.db")
    return top


def test_market1501_records(tmp_path):
    top = make_market(tmp_path / "Market-1501-v15.09.15")
    ds = Market1501(top)
    # train ids 2, 7, 10 relabelled to 0, 1, 2 in sorted order; cameras c1.. -> 0..
    assert as_tuples(ds.train) == sorted([
        ("0002_c1s1_000451_03.jpg", 0, 0), ("0002_c2s1_000301_01.jpg", 0, 1),
        ("0007_c3s3_064169_01.jpg", 1, 2), ("0010_c6s4_002452_02.jpg", 2, 5)])
    assert as_tuples(ds.query) == [("0002_c1s1_001051_00.jpg", 2, 0),
                                   ("0007_c2s3_070952_00.jpg", 7, 1)]
    # junk (-1) dropped, distractor (0) kept, Thumbs.db ignored everywhere
    assert as_tuples(ds.gallery) == sorted([
        ("0002_c3s1_000551_01.jpg", 2, 2), ("0007_c5s3_065187_02.jpg", 7, 4),
        ("0000_c1s1_000000_00.jpg", 0, 0)])
    assert all(Path(r.path).is_file() for r in ds.train + ds.query + ds.gallery)
    assert (ds.num_train_pids, ds.num_train_cams, ds.num_cams) == (3, 4, 5)
    assert all(isinstance(r, Record) for r in ds.train)


@pytest.mark.parametrize("top, root", [
    ("Market-1501-v15.09.15", "Market-1501-v15.09.15"),
    ("Market-1501-v15.09.15", "."),
    ("market1501/Market-1501-v15.09.15", "."),
    ("market1501/Market-1501-v15.09.15", "market1501"),
    ("Market-1501", "."),
])
def test_market1501_root_forms(tmp_path, top, root):
    make_market(tmp_path / top)
    ds = Market1501(tmp_path / root)
    assert ds.root == tmp_path / top
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (4, 2, 3)


def test_market1501_accepts_str_root(tmp_path):
    make_market(tmp_path / "Market-1501-v15.09.15")
    assert len(Market1501(str(tmp_path)).train) == 4


def test_market_missing_dataset(tmp_path):
    with pytest.raises(DatasetFormatError, match="could not find the dataset"):
        Market1501(tmp_path)
    with pytest.raises(DatasetFormatError, match="does not exist"):
        Market1501(tmp_path / "nowhere")


def test_market_missing_folder(tmp_path):
    top = make_market(tmp_path / "Market-1501-v15.09.15")
    shutil.rmtree(top / "query")
    with pytest.raises(DatasetFormatError, match=r"missing folder .*query"):
        Market1501(tmp_path)


def test_market_unparsable_names_listed(tmp_path):
    bad = [f"img{i}.jpg" for i in range(7)]
    top = make_market(tmp_path / "Market-1501-v15.09.15", train=MARKET_TRAIN + bad)
    with pytest.raises(DatasetFormatError) as err:
        Market1501(top)
    msg = str(err.value)
    assert "7 file name(s)" in msg and str(top / "bounding_box_train") in msg
    assert "img0.jpg, img1.jpg, img2.jpg, img3.jpg, img4.jpg" in msg
    assert "img5.jpg" not in msg and "(and 2 more)" in msg


def test_market_camera_zero_is_an_error(tmp_path):
    top = make_market(tmp_path / "Market-1501-v15.09.15",
                      gallery=MARKET_GALLERY + ["0002_c0s1_000551_01.jpg"])
    with pytest.raises(DatasetFormatError, match="0002_c0s1_000551_01.jpg"):
        Market1501(top)


def test_market_empty_split(tmp_path):
    top = make_market(tmp_path / "Market-1501-v15.09.15", query=[])
    with pytest.raises(DatasetFormatError, match="the query split of .* is empty"):
        Market1501(top)


def test_market_unmatched_query_warns(tmp_path):
    # query 7 is seen by c2; its only gallery image is also from c2
    gallery = ["0002_c3s1_000551_01.jpg", "0007_c2s3_065187_02.jpg"]
    top = make_market(tmp_path / "Market-1501-v15.09.15", gallery=gallery)
    with pytest.warns(UserWarning, match=r"1 query id\(s\) .* another camera .*: 7$"):
        ds = Market1501(top)
    assert len(ds.query) == 2


def test_dukemtmcreid(tmp_path):
    make_market(tmp_path / "DukeMTMC-reID",
                train=["0001_c2_f0046182.jpg", "0005_c8_f0057110.jpg"],
                query=["0003_c1_f0044158.jpg"],
                gallery=["0003_c5_f0051781.jpg", "0000_c7_f0101010.jpg"])
    ds = DukeMTMCreID(tmp_path)
    assert as_tuples(ds.train) == [("0001_c2_f0046182.jpg", 0, 1),
                                   ("0005_c8_f0057110.jpg", 1, 7)]
    assert as_tuples(ds.query) == [("0003_c1_f0044158.jpg", 3, 0)]
    assert as_tuples(ds.gallery) == [("0000_c7_f0101010.jpg", 0, 6),
                                     ("0003_c5_f0051781.jpg", 3, 4)]


def make_cuhk03np(top: Path) -> Path:
    make_market(top / "detected", train=["0001_c1_1.png", "0003_c2_2.png"],
                query=["0011_c1_1.png"], gallery=["0011_c2_3.png"])
    make_market(top / "labeled", train=["0002_c2_1.png"],
                query=["0012_c2_1.png", "0013_c1_1.png"],
                gallery=["0012_c1_4.png", "0013_c2_2.png"])
    return top


@pytest.mark.parametrize("root", ["cuhk03-np", "."])
def test_cuhk03np_variants(tmp_path, root):
    make_cuhk03np(tmp_path / "cuhk03-np")
    det = CUHK03NP(tmp_path / root)
    assert det.root == tmp_path / "cuhk03-np" / "detected"
    assert as_tuples(det.train) == [("0001_c1_1.png", 0, 0), ("0003_c2_2.png", 1, 1)]
    assert as_tuples(det.query) == [("0011_c1_1.png", 11, 0)]
    lab = CUHK03NP(tmp_path / root, variant="labeled")
    assert as_tuples(lab.train) == [("0002_c2_1.png", 0, 1)]
    assert as_tuples(lab.gallery) == [("0012_c1_4.png", 12, 0), ("0013_c2_2.png", 13, 1)]


def test_cuhk03np_errors(tmp_path):
    make_cuhk03np(tmp_path / "cuhk03-np")
    with pytest.raises(DatasetFormatError, match="'detected' or 'labeled'"):
        CUHK03NP(tmp_path, variant="both")
    shutil.rmtree(tmp_path / "cuhk03-np" / "labeled")
    with pytest.raises(DatasetFormatError, match=r"labeled.bounding_box_train"):
        CUHK03NP(tmp_path, variant="labeled")


# ---------------------------------------------------------------------------------------
# MSMT17
# ---------------------------------------------------------------------------------------

# (pid, camera 1..15, index) per list
MSMT_TRAIN = [(0, 1, 0), (0, 3, 1), (1, 15, 2), (5, 2, 3)]
MSMT_VAL = [(1, 4, 4), (9, 7, 5)]
MSMT_QUERY = [(0, 1, 0), (3, 2, 1)]
MSMT_GALLERY = [(0, 5, 2), (3, 9, 3), (3, 2, 4), (8, 11, 5)]


def msmt_name(pid: int, cam: int, idx: int) -> str:
    return f"{pid:04d}_{idx:03d}_{cam:02d}_0303morning_{idx:04d}_0.jpg"


def make_msmt(top: Path, version: int = 1, lists=None) -> Path:
    train_dir, test_dir = ("train", "test") if version == 1 else ("mask_train_v2", "mask_test_v2")
    lists = lists or {"train": MSMT_TRAIN, "val": MSMT_VAL, "query": MSMT_QUERY,
                      "gallery": MSMT_GALLERY}
    for split, entries in lists.items():
        folder = top / (train_dir if split in ("train", "val") else test_dir)
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for pid, cam, idx in entries:
            rel = f"{pid:04d}/{msmt_name(pid, cam, idx)}"
            touch(folder / rel)
            lines.append(f"{rel} {pid}\n")
        (top / f"list_{split}.txt").write_text("".join(lines))
    return top


def expected_msmt(entries, relabelled: bool):
    pids = sorted({p for p, _, _ in entries})
    return sorted((msmt_name(p, c, i), pids.index(p) if relabelled else p, c - 1)
                  for p, c, i in entries)


@pytest.mark.parametrize("version", [1, 2])
def test_msmt17_records(tmp_path, version):
    top = make_msmt(tmp_path / f"MSMT17_V{version}", version)
    ds = MSMT17(tmp_path)
    assert ds.version == version and ds.root == top
    assert as_tuples(ds.train) == expected_msmt(MSMT_TRAIN, relabelled=True)
    assert as_tuples(ds.query) == expected_msmt(MSMT_QUERY, relabelled=False)
    assert as_tuples(ds.gallery) == expected_msmt(MSMT_GALLERY, relabelled=False)
    image_dir = top / ("train" if version == 1 else "mask_train_v2")
    assert all(Path(r.path).is_relative_to(image_dir) for r in ds.train)
    assert (ds.num_train_pids, ds.num_cams) == (3, 7)  # cameras 1,2,3,5,9,11,15


@pytest.mark.parametrize("version", [1, 2])
def test_msmt17_combine_val(tmp_path, version):
    make_msmt(tmp_path / f"MSMT17_V{version}", version)
    ds = MSMT17(tmp_path / f"MSMT17_V{version}", combine_val=True)
    # ids relabelled over the union: 0, 1, 5, 9 -> 0, 1, 2, 3
    assert as_tuples(ds.train) == expected_msmt(MSMT_TRAIN + MSMT_VAL, relabelled=True)
    assert ds.num_train_pids == 4 and len(ds.train) == 6


@pytest.mark.parametrize("top, root", [
    ("MSMT17_V1", "MSMT17_V1"),
    ("MSMT17", "."),
    ("MSMT17", "MSMT17"),
    ("msmt17/MSMT17_V1", "."),
])
def test_msmt17_root_forms(tmp_path, top, root):
    make_msmt(tmp_path / top)
    ds = MSMT17(tmp_path / root)
    assert ds.root == tmp_path / top
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (4, 2, 4)


def test_msmt17_both_versions_under_parent(tmp_path):
    make_msmt(tmp_path / "MSMT17_V1", 1)
    make_msmt(tmp_path / "MSMT17_V2", 2, lists={
        "train": [(4, 1, 0)], "query": [(2, 1, 1)], "gallery": [(2, 2, 2)]})
    assert MSMT17(tmp_path).version == 1
    v2 = MSMT17(tmp_path, version=2)
    assert v2.version == 2 and as_tuples(v2.train) == [(msmt_name(4, 1, 0), 0, 0)]
    with pytest.raises(DatasetFormatError, match="version must be"):
        MSMT17(tmp_path, version=3)


def test_msmt17_val_list_only_needed_with_combine_val(tmp_path):
    top = make_msmt(tmp_path / "MSMT17_V1")
    (top / "list_val.txt").unlink()
    assert len(MSMT17(top).train) == 4
    with pytest.raises(DatasetFormatError, match=r"missing MSMT17 list file .*list_val.txt"):
        MSMT17(top, combine_val=True)


def test_msmt17_missing_dataset_and_folders(tmp_path):
    with pytest.raises(DatasetFormatError, match="could not find MSMT17 under"):
        MSMT17(tmp_path)
    top = make_msmt(tmp_path / "MSMT17_V1")
    shutil.rmtree(top / "test")
    with pytest.raises(DatasetFormatError, match=r"missing MSMT17 folder .*MSMT17_V1.test"):
        MSMT17(tmp_path)
    shutil.rmtree(top / "train")
    with pytest.raises(DatasetFormatError, match=r"missing MSMT17 folder .*MSMT17_V1.train"):
        MSMT17(tmp_path)


def test_msmt17_missing_list_file(tmp_path):
    top = make_msmt(tmp_path / "MSMT17_V2", 2)
    (top / "list_query.txt").unlink()
    with pytest.raises(DatasetFormatError) as err:
        MSMT17(tmp_path)
    assert str(top / "list_query.txt") in str(err.value)


def test_msmt17_unparsable_lines_listed(tmp_path):
    top = make_msmt(tmp_path / "MSMT17_V1")
    good = (top / "list_train.txt").read_text().splitlines()
    bad = ["0000/0000_000_01_0303morning_0015_0.jpg",          # no pid
           "0000/0000_000_01_0303morning_0015_0.jpg x",        # pid not a number
           "0000/0000_000_16_0303morning_0015_0.jpg 0",        # camera out of range
           "0000/0000_000_00_0303morning_0015_0.jpg 0",        # camera 0
           "0000/0000_000_1_0303morning_0015_0.jpg 0",         # camera not two digits
           "0000/garbage.jpg 0"]                               # no camera field
    (top / "list_train.txt").write_text("\n".join(good[:1] + bad + good[1:]) + "\n")
    with pytest.raises(DatasetFormatError) as err:
        MSMT17(top)
    msg = str(err.value)
    assert "6 line(s)" in msg and str(top / "list_train.txt") in msg
    for lineno in range(2, 7):
        assert f"line {lineno}:" in msg
    assert "line 7:" not in msg and "(and 1 more)" in msg


def test_msmt17_listed_image_missing(tmp_path):
    top = make_msmt(tmp_path / "MSMT17_V1")
    missing = top / "test" / "0003" / msmt_name(3, 9, 3)
    missing.unlink()
    with pytest.raises(DatasetFormatError) as err:
        MSMT17(top)
    msg = str(err.value)
    assert "1 image(s) listed in" in msg and "list_gallery.txt" in msg
    assert f"line 2: {missing}" in msg


def test_msmt17_empty_list(tmp_path):
    top = make_msmt(tmp_path / "MSMT17_V1")
    (top / "list_query.txt").write_text("\n")
    with pytest.raises(DatasetFormatError, match=r"list_query.txt has no entries"):
        MSMT17(top)


def test_msmt17_unmatched_query_warns(tmp_path):
    make_msmt(tmp_path / "MSMT17_V1", lists={
        "train": MSMT_TRAIN, "query": [(0, 1, 0), (3, 2, 1)],
        "gallery": [(0, 5, 2), (3, 2, 3)]})
    with pytest.warns(UserWarning, match=r"1 query id\(s\) .*: 3$"):
        MSMT17(tmp_path)


# ---------------------------------------------------------------------------------------
# CustomReID: listing
# ---------------------------------------------------------------------------------------

# (relative path, pid, camera, split): string ids, 1-based cameras
CUSTOM_ROWS = [
    ("imgs/alice_1.jpg", "alice", "1", "train"),
    ("imgs/alice_2.jpg", "alice", "2", "train"),
    ("imgs/zed_1.jpg", "zed", "3", "train"),
    ("imgs/bob_q.jpg", "bob", "1", "query"),
    ("imgs/carol_q.jpg", "carol", "2", "query"),
    ("imgs/bob_g.jpg", "bob", "3", "gallery"),
    ("imgs/carol_g.jpg", "carol", "3", "gallery"),
    ("imgs/dave_g.jpg", "dave", "1", "gallery"),
]
# query/gallery names in sorted order: bob 0, carol 1, dave 2; train: alice 0, zed 1
CUSTOM_EXPECTED = {
    "train": [("alice_1.jpg", 0, 0), ("alice_2.jpg", 0, 1), ("zed_1.jpg", 1, 2)],
    "query": [("bob_q.jpg", 0, 0), ("carol_q.jpg", 1, 1)],
    "gallery": [("bob_g.jpg", 0, 2), ("carol_g.jpg", 1, 2), ("dave_g.jpg", 2, 0)],
}


def write_listing(path: Path, rows, header=("path", "pid", "camid", "split"), sep=",",
                  create=True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [sep.join(header)] + [sep.join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    if create:
        col = [h.lower() for h in header].index("path") if "path" in header else 0
        for row in rows:
            p = Path(row[col])
            touch(p if p.is_absolute() else path.parent / p)
    return path


def check_custom(ds, expected=CUSTOM_EXPECTED):
    for split in ("train", "query", "gallery"):
        assert as_tuples(getattr(ds, split)) == sorted(expected[split]), split
    assert all(Path(r.path).is_file() for r in ds.train + ds.query + ds.gallery)


@pytest.mark.parametrize("name, sep", [("list.csv", ","), ("list.tsv", "\t"),
                                       ("list.txt", "\t"), ("list.txt", ";")])
def test_custom_listing(tmp_path, name, sep):
    listing = write_listing(tmp_path / "data" / name, CUSTOM_ROWS, sep=sep)
    ds = CustomReID(tmp_path / "data", listing=name)
    check_custom(ds)
    assert ds.listing == listing
    assert ds.camera_names == ["1", "2", "3"]
    assert ds.pid_names == {0: "bob", 1: "carol", 2: "dave"}
    assert ds.train_pid_names == {0: "alice", 1: "zed"}


def test_custom_listing_file_as_root_abs_paths_extra_columns(tmp_path):
    absolute = tmp_path / "elsewhere" / "dave_g.jpg"
    rows = [(*row, "note") for row in CUSTOM_ROWS[:-1]]
    rows.append((str(absolute), "dave", "1", "gallery", "note"))
    # columns in another order, upper case, plus an ignored column
    rows = [(split.upper(), pid, path, note, cam) for path, pid, cam, split, note in rows]
    listing = write_listing(tmp_path / "data" / "list.csv", rows,
                            header=("Split", "PID", "path", "note", "camid"))
    ds = CustomReID(listing)
    check_custom(ds)
    assert str(absolute) in [r.path for r in ds.gallery]


def test_custom_listing_cameras_from_names_numeric_ids(tmp_path):
    rows = [("a/0001_c2_0.jpg", "0001", "train"), ("a/0001_c5_1.jpg", "1", "train"),
            ("a/0004_c2_2.jpg", "0004", "train"),
            ("b/0007_c2_0.jpg", "0007", "query"),
            ("b/0007_c9_1.jpg", "7", "gallery"), ("b/0000_c2_2.jpg", "0", "gallery"),
            ("b/junk_c5_3.jpg", "-1", "gallery")]
    write_listing(tmp_path / "list.tsv", rows, header=("path", "pid", "split"), sep="\t")
    ds = CustomReID(tmp_path, listing="list.tsv")
    # cameras {2, 5, 9} -> {0, 1, 2}; numeric test ids keep their value (0 = distractor)
    check_custom(ds, {
        "train": [("0001_c2_0.jpg", 0, 0), ("0001_c5_1.jpg", 0, 1), ("0004_c2_2.jpg", 1, 0)],
        "query": [("0007_c2_0.jpg", 7, 0)],
        "gallery": [("0007_c9_1.jpg", 7, 2), ("0000_c2_2.jpg", 0, 0)],
    })
    assert ds.camera_names == ["2", "5", "9"]


def test_custom_listing_custom_camera_pattern(tmp_path):
    rows = [("x/p1_cam10.jpg", "p1", "train"), ("x/p1_cam2.jpg", "p1", "train"),
            ("x/p2_cam2.jpg", "p2", "query"), ("x/p2_cam10.jpg", "p2", "gallery")]
    write_listing(tmp_path / "l.csv", rows, header=("path", "pid", "split"))
    ds = CustomReID(tmp_path / "l.csv", camera_pattern=r"cam(\d+)")
    # numeric order: camera 2 -> 0, camera 10 -> 1
    check_custom(ds, {"train": [("p1_cam10.jpg", 0, 1), ("p1_cam2.jpg", 0, 0)],
                      "query": [("p2_cam2.jpg", 0, 0)], "gallery": [("p2_cam10.jpg", 0, 1)]})


def test_custom_listing_errors(tmp_path):
    with pytest.raises(DatasetFormatError, match="dataset root .* does not exist"):
        CustomReID(tmp_path / "nowhere", listing="list.csv")
    with pytest.raises(DatasetFormatError, match=r"missing listing file .*list.csv"):
        CustomReID(tmp_path, listing="list.csv")

    no_pid = write_listing(tmp_path / "nopid.csv", [("a_c1.jpg", "train")],
                           header=("path", "split"))
    with pytest.raises(DatasetFormatError, match=r"nopid.csv has no column 'pid'.*header"):
        CustomReID(no_pid)

    no_cam = write_listing(tmp_path / "nocam.csv", [("a_c1.jpg", "a", "train")],
                           header=("path", "pid", "split"))
    with pytest.raises(DatasetFormatError, match=r"nocam.csv has no column 'camid'"):
        CustomReID(no_cam, camera_pattern=None)

    headerless = write_listing(tmp_path / "headerless.csv", CUSTOM_ROWS[1:],
                               header=CUSTOM_ROWS[0])
    with pytest.raises(DatasetFormatError, match="header row .* is required"):
        CustomReID(headerless)


def test_custom_listing_unknown_split(tmp_path):
    rows = CUSTOM_ROWS + [("imgs/x.jpg", "x", "1", "test"), ("imgs/y.jpg", "y", "1", "val")]
    listing = write_listing(tmp_path / "list.csv", rows)
    with pytest.raises(DatasetFormatError) as err:
        CustomReID(listing)
    msg = str(err.value)
    assert "2 row(s) of listing" in msg and str(listing) in msg
    assert "train, query, gallery" in msg
    assert "line 10: 'test'" in msg and "line 11: 'val'" in msg


def test_custom_listing_camera_not_parsed(tmp_path):
    rows = [(f"imgs/person{i}.jpg", "p", "train") for i in range(6)]
    rows += [("imgs/ok_c1.jpg", "p", "query"), ("imgs/ok_c2.jpg", "p", "gallery")]
    listing = write_listing(tmp_path / "list.csv", rows, header=("path", "pid", "split"))
    with pytest.raises(DatasetFormatError) as err:
        CustomReID(listing)
    msg = str(err.value)
    assert "6 row(s)" in msg and "camera_pattern 'c(\\\\d+)'" in msg
    assert "line 2: imgs/person0.jpg" in msg and "line 6: imgs/person4.jpg" in msg
    assert "person5" not in msg and "(and 1 more)" in msg

    rows = [list(r) for r in CUSTOM_ROWS]
    rows[2][2] = ""
    listing = write_listing(tmp_path / "empty_cam.csv", rows)
    with pytest.raises(DatasetFormatError, match=r"1 row\(s\) .* empty camid: line 4: "):
        CustomReID(listing)


def test_custom_listing_missing_image_and_short_row(tmp_path):
    listing = write_listing(tmp_path / "list.csv", CUSTOM_ROWS)
    (tmp_path / "imgs" / "carol_q.jpg").unlink()
    with pytest.raises(DatasetFormatError) as err:
        CustomReID(listing)
    assert f"1 image(s) listed in {listing} do not exist: line 6: " in str(err.value)
    assert str(tmp_path / "imgs" / "carol_q.jpg") in str(err.value)

    with listing.open("a") as f:
        f.write("imgs/bob_q.jpg,bob\n")
    with pytest.raises(DatasetFormatError, match=r"fewer fields .* line 10: "):
        CustomReID(listing)


def test_custom_listing_empty_split(tmp_path):
    rows = [r for r in CUSTOM_ROWS if r[3] != "query"]
    listing = write_listing(tmp_path / "list.csv", rows)
    with pytest.raises(DatasetFormatError,
                       match=r"the query split of listing .*list.csv is empty"):
        CustomReID(listing)
    (tmp_path / "blank.csv").write_text("")
    with pytest.raises(DatasetFormatError, match=r"blank.csv is empty"):
        CustomReID(tmp_path / "blank.csv")


def test_custom_listing_unmatched_query_warns(tmp_path):
    rows = [list(r) for r in CUSTOM_ROWS]
    rows[6][2] = "2"  # carol's gallery image now from the query's camera
    listing = write_listing(tmp_path / "list.csv", rows)
    with pytest.warns(UserWarning, match=r"1 query id\(s\) .*: 1$"):
        ds = CustomReID(listing)
    assert ds.pid_names[1] == "carol"


# ---------------------------------------------------------------------------------------
# CustomReID: folder tree
# ---------------------------------------------------------------------------------------

TREE = {
    "train": {"alice": ["a_c1_0.jpg", "a_c3_1.png"], "zed": ["z_c3_0.jpg"]},
    "query": {"bob": ["b_c8_0.jpg"], "carol": ["c_c1_0.jpg"]},
    "gallery": {"bob": ["b_c1_1.jpg"], "carol": ["c_c3_1.jpg"], "dave": ["d_c8_0.JPG"]},
}
# cameras {1, 3, 8} -> {0, 1, 2} across splits (8 is only seen by query and gallery)
TREE_EXPECTED = {
    "train": [("a_c1_0.jpg", 0, 0), ("a_c3_1.png", 0, 1), ("z_c3_0.jpg", 1, 1)],
    "query": [("b_c8_0.jpg", 0, 2), ("c_c1_0.jpg", 1, 0)],
    "gallery": [("b_c1_1.jpg", 0, 0), ("c_c3_1.jpg", 1, 1), ("d_c8_0.JPG", 2, 2)],
}


def make_tree(root: Path, tree=TREE) -> Path:
    for split, people in tree.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for pid, names in people.items():
            for name in names:
                touch(root / split / pid / name)
    return root


def test_custom_tree(tmp_path):
    root = make_tree(tmp_path / "mydata")
    touch(root / "train" / "alice" / "notes.txt")       # not an image: ignored
    touch(root / "train" / "alice" / "._a_c1_0.jpg")    # macOS metadata: ignored
    ds = CustomReID(root)
    check_custom(ds, TREE_EXPECTED)
    assert ds.listing is None and ds.name == "custom"
    assert ds.camera_names == ["1", "3", "8"]
    assert ds.pid_names == {0: "bob", 1: "carol", 2: "dave"}
    assert ds.num_cams == 3


def test_custom_tree_numeric_ids_and_pattern(tmp_path):
    tree = {"train": {"0003": ["x_cam2.jpg"], "0010": ["y_cam4.jpg"]},
            "query": {"0005": ["q_cam2.jpg"]},
            "gallery": {"0005": ["g_cam4.jpg"], "0": ["d_cam2.jpg"], "-1": ["j_cam2.jpg"]}}
    ds = CustomReID(make_tree(tmp_path, tree), camera_pattern=r"cam(\d+)", name="mine")
    check_custom(ds, {"train": [("x_cam2.jpg", 0, 0), ("y_cam4.jpg", 1, 1)],
                      "query": [("q_cam2.jpg", 5, 0)],
                      "gallery": [("g_cam4.jpg", 5, 1), ("d_cam2.jpg", 0, 0)]})
    assert ds.name == "mine"
    assert ds.summary().splitlines()[2].split() == ["train", "2", "2", "2"]


def test_custom_tree_missing_split_folder(tmp_path):
    root = make_tree(tmp_path)
    shutil.rmtree(root / "gallery")
    with pytest.raises(DatasetFormatError,
                       match=r"missing folder .*gallery: expected .*<split>/<pid>/<image>"):
        CustomReID(root)


def test_custom_tree_camera_not_parsed(tmp_path):
    tree = {**TREE, "train": {"alice": [f"alice_{i}.jpg" for i in range(7)]}}
    root = make_tree(tmp_path, tree)
    with pytest.raises(DatasetFormatError) as err:
        CustomReID(root)
    msg = str(err.value)
    assert "7 file name(s)" in msg and str(root / "train") in msg
    assert "alice/alice_0.jpg; alice/alice_1.jpg" in msg and "alice_5" not in msg
    assert "(and 2 more)" in msg
    with pytest.raises(DatasetFormatError, match="needs a camera_pattern"):
        CustomReID(root, camera_pattern=None)
    with pytest.raises(DatasetFormatError, match="needs a group"):
        CustomReID(root, camera_pattern=r"c\d+")


def test_custom_tree_empty_split_and_loose_images(tmp_path):
    root = make_tree(tmp_path)
    shutil.rmtree(root / "query")
    (root / "query" / "bob").mkdir(parents=True)
    with pytest.raises(DatasetFormatError, match=r"the query split of .* is empty"):
        CustomReID(root)
    touch(root / "query" / "b_c8_0.jpg")
    with pytest.raises(DatasetFormatError, match=r"directly in .*query.*<pid>/<image>"):
        CustomReID(root)


def test_custom_tree_unmatched_query_warns(tmp_path):
    tree = {**TREE, "gallery": {"bob": ["b_c8_1.jpg"], "carol": ["c_c3_1.jpg"]}}
    with pytest.warns(UserWarning, match=r"1 query id\(s\) .*: 0$"):
        CustomReID(make_tree(tmp_path, tree))

