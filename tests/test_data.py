"""Data layer: layouts, splits, masks, image conversion, bad files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from robust_ad.data import AnomalyDataset
from robust_ad.data.arrays import load_samples
from robust_ad.data.check import check_dataset
from robust_ad.data.images import read_image, read_mask, read_raw, to_mask
from robust_ad.data.synth import defect_types, synthesize
from robust_ad.errors import DataError, ImageReadError, OverwriteError
from tests.conftest import make_image, make_mask


def test_mvtec_layout_and_splits(synth_root: Path) -> None:
    ds = AnomalyDataset.load(synth_root, "bottle", val_fraction=0.25, seed=3)
    assert ds.layout == "mvtec"
    assert len(ds.train) + len(ds.val) == 24 and len(ds.val) == 6
    assert not {s.path for s in ds.train} & {s.path for s in ds.val}
    assert ds.defect_types == sorted(defect_types("bottle"))
    assert sum(s.label for s in ds.test) == 15 and len(ds.test) == 21
    assert ds.has_masks()
    # The validation split is chosen by seed, and the same seed gives the same split.
    again = AnomalyDataset.load(synth_root, "bottle", val_fraction=0.25, seed=3)
    other = AnomalyDataset.load(synth_root, "bottle", val_fraction=0.25, seed=4)
    assert [s.path for s in again.val] == [s.path for s in ds.val]
    assert [s.path for s in other.val] != [s.path for s in ds.val]


def test_masks_align_with_defects(synth_root: Path) -> None:
    ds = AnomalyDataset.load(synth_root, "fabric")
    data = load_samples(ds.test, 64)
    for image_mask, label in zip(data.masks, data.labels, strict=True):
        assert image_mask.any() == bool(label)
    # The painted defect really is where the mask says: pixels inside differ from a normal image more.
    defect = next(i for i, s in enumerate(data.samples) if s.defect_type == "hole")
    inside = data.images[defect][data.masks[defect]].mean()
    outside = data.images[defect][~data.masks[defect]].mean()
    assert inside < outside  # holes are dark


def test_synth_is_deterministic_and_refuses_overwrite(tmp_path: Path) -> None:
    a = synthesize(tmp_path / "a", "gravel", size=32, n_train=2, n_test_good=1, n_per_defect=1, seed=5)
    b = synthesize(tmp_path / "b", "gravel", size=32, n_train=2, n_test_good=1, n_per_defect=1, seed=5)
    c = synthesize(tmp_path / "c", "gravel", size=32, n_train=2, n_test_good=1, n_per_defect=1, seed=6)
    first = (a / "train/good/000.png").read_bytes()
    assert first == (b / "train/good/000.png").read_bytes()
    assert first != (c / "train/good/000.png").read_bytes()
    with pytest.raises(OverwriteError):
        synthesize(tmp_path / "a", "gravel", size=32, n_train=2, n_test_good=1, n_per_defect=1, seed=5)


def test_normal_images_vary(synth_root: Path) -> None:
    ds = AnomalyDataset.load(synth_root, "bottle")
    images = load_samples(ds.train[:6], 64).images
    assert np.abs(images[0] - images[1]).mean() > 0.01


def _visa(root: Path, with_masks: bool = True) -> Path:
    base = root / "candle" / "Data"
    rows = ["object,split,label,image,mask"]
    for i in range(4):
        make_image(base / "Images" / "Normal" / f"{i:03d}.JPG", seed=i)
        rows.append(f"candle,train,normal,candle/Data/Images/Normal/{i:03d}.JPG,")
    make_image(base / "Images" / "Normal" / "100.JPG", seed=9)
    rows.append("candle,test,normal,candle/Data/Images/Normal/100.JPG,")
    for i in range(2):
        make_image(base / "Images" / "Anomaly" / f"{i:03d}.JPG", value=0.8, seed=i)
        mask = f"candle/Data/Masks/Anomaly/{i:03d}.png" if with_masks else ""
        if with_masks:
            make_mask(root / mask)
        rows.append(f"candle,test,anomaly,candle/Data/Images/Anomaly/{i:03d}.JPG,{mask}")
    rows.append("other,train,normal,other/x.JPG,")
    (root / "split_csv").mkdir()
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def test_visa_layout(tmp_path: Path) -> None:
    ds = AnomalyDataset.load(_visa(tmp_path), "candle", val_fraction=0.25)
    assert ds.layout == "visa"
    assert len(ds.train) == 3 and len(ds.val) == 1 and len(ds.test) == 3
    assert ds.has_masks() and check_dataset(ds).usable


@pytest.mark.parametrize(("old", "new"), [(",test,anomaly,", ",test,anomalous,"), ("candle,train,", "candle,Trian,")])
def test_a_visa_split_file_with_an_unknown_label_or_split_is_refused(tmp_path: Path, old: str, new: str) -> None:
    """A typo would silently make a defect normal, or move a training image into the test split."""
    split = _visa(tmp_path) / "split_csv" / "1cls.csv"
    split.write_text(split.read_text().replace(old, new, 1))
    with pytest.raises(DataError, match=r"1cls.csv, line \d+: label .* must be one of normal/anomaly and train/test"):
        AnomalyDataset.load(tmp_path, "candle")
    split.write_text(split.read_text().replace(new, old.replace("train", "Train"), 1))  # case is no typo
    assert AnomalyDataset.load(tmp_path, "candle", val_fraction=0.25).layout == "visa"


def test_a_visa_split_file_saved_with_semicolons_says_so(tmp_path: Path) -> None:
    """A spreadsheet set to a German locale saves CSV with ';': 'missing columns ...' named every column."""
    split = _visa(tmp_path) / "split_csv" / "1cls.csv"
    split.write_text(split.read_text().replace(",", ";"))
    with pytest.raises(DataError, match=r"missing columns .* \(its header is separated by ';': save it with commas\)"):
        AnomalyDataset.load(tmp_path, "candle")


def test_a_visa_split_file_that_contradicts_itself_is_refused(tmp_path: Path) -> None:
    """A user trial: an anomalous image in the train split was trained on as normal (and counted among the held-out
    normals), an image in both splits was scored on; a mask file that does not exist was dropped without a word."""
    split = _visa(tmp_path) / "split_csv" / "1cls.csv"
    text = split.read_text()
    split.write_text(
        text.replace(
            "candle,test,anomaly,candle/Data/Images/Anomaly/000", "candle,train,anomaly,candle/Data/Images/Anomaly/000"
        )
    )
    with pytest.raises(DataError, match=r"line 7: an anomalous image in the train split"):
        AnomalyDataset.load(tmp_path, "candle")
    split.write_text(text + "candle,test,normal,candle/Data/Images/Normal/001.JPG,\n")
    with pytest.raises(DataError, match=r"line 10: candle/Data/Images/Normal/001.JPG is listed already \(line 3\)"):
        AnomalyDataset.load(tmp_path, "candle")
    split.write_text(text.replace("Masks/Anomaly/001.png", "Masks/Anomaly/001_typo.png"))
    report = check_dataset(AnomalyDataset.load(tmp_path, "candle"))
    assert not report.usable and "001_typo.png: cannot open" in report.reason()
    split.write_bytes(b"\xef\xbb\xbf" + text.encode())  # saved by a spreadsheet
    assert check_dataset(AnomalyDataset.load(tmp_path, "candle")).usable
    split.write_text(text.encode("utf-16").decode("latin-1"), encoding="latin-1")  # its 'Unicode text'
    with pytest.raises(DataError, match="not UTF-8 text"):
        AnomalyDataset.load(tmp_path, "candle")
    split.write_text(text + "candle,test,normal,./candle/Data/Images/Normal//001.JPG,\n")  # another spelling
    with pytest.raises(DataError, match=r"candle/Data/Images/Normal/001.JPG is listed already \(line 3\)"):
        AnomalyDataset.load(tmp_path, "candle")


def test_defects_without_masks_still_load(tmp_path: Path) -> None:
    ds = AnomalyDataset.load(_visa(tmp_path, with_masks=False), "candle")
    assert not ds.has_masks()
    report = check_dataset(ds)
    assert report.usable and report.defects_without_mask == 2
    assert not load_samples(ds.test, 16).masks.any()


def test_folder_layout_with_defect_subfolders(tmp_path: Path) -> None:
    for i in range(10):
        make_image(tmp_path / "good" / f"g{i}.png", seed=i)
    make_image(tmp_path / "defect" / "scratch" / "s0.png", value=0.9)
    make_image(tmp_path / "defect" / "dent" / "d0.png", value=0.1)
    make_mask(tmp_path / "masks" / "s0_mask.png")
    ds = AnomalyDataset.load(tmp_path, "parts", test_normal_fraction=0.2, val_fraction=0.25, seed=0)
    assert ds.layout == "folder"
    assert ds.defect_types == ["dent", "scratch"]
    assert len(ds.test) == 4 and len(ds.train) + len(ds.val) == 8
    assert ds.has_masks("scratch") and not ds.has_masks("dent")
    make_mask(tmp_path / "masks" / "dent" / "d0.PNG")  # any image suffix, any case (it was unused)
    assert AnomalyDataset.load(tmp_path, "parts").has_masks("dent")
    make_mask(tmp_path / "masks" / "dent" / "d0_mask.jpg")  # a second one: which? (a JPEG won over the PNG)
    with pytest.raises(DataError, match=r"d0.png has 2 masks \(d0.PNG, d0_mask.jpg\): keep one"):
        AnomalyDataset.load(tmp_path, "parts")


def test_folder_masks_of_a_name_shared_by_two_defect_types_are_refused_unless_kept_per_type(tmp_path: Path) -> None:
    for i in range(4):
        make_image(tmp_path / "good" / f"g{i}.png", seed=i)
    for defect in ("scratch", "hole"):
        make_image(tmp_path / "defect" / defect / "000.png", value=0.9)
    make_mask(tmp_path / "masks" / "000_mask.png")  # whose? scratch's, or hole's
    with pytest.raises(DataError, match=r"000_mask.png matches defect images of several types named 000"):
        AnomalyDataset.load(tmp_path, "parts")
    (tmp_path / "masks" / "000_mask.png").rename(tmp_path / "masks" / "scratch.png")
    make_mask(tmp_path / "masks" / "scratch" / "000_mask.png")
    ds = AnomalyDataset.load(tmp_path, "parts")
    assert ds.has_masks("scratch") and not ds.has_masks("hole")


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: np.full((8, 8), 128, np.uint8), [128 / 255] * 3),
        (lambda: np.full((8, 8), 65535, np.uint16), [1.0] * 3),
        (lambda: np.dstack([np.full((8, 8), v, np.uint8) for v in (10, 20, 30, 255)]), [30 / 255, 20 / 255, 10 / 255]),
        (lambda: np.dstack([np.full((8, 8), v, np.uint16) for v in (0, 0, 65535)]), [1.0, 0.0, 0.0]),
    ],
    ids=["gray8", "gray16", "bgra8", "bgr16"],
)
def test_image_conversion(tmp_path: Path, make, expected) -> None:
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), make())
    image = read_image(path)
    assert image.shape == (8, 8, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image[0, 0], expected, atol=1e-6)


def test_twelve_bit_data_in_a_sixteen_bit_file_is_warned_of_once(tmp_path: Path, caplog, monkeypatch) -> None:
    from robust_ad.data import images

    monkeypatch.setattr(images, "_WARNED", set())
    cv2.imwrite(str(tmp_path / "full.png"), np.full((8, 8), 60000, np.uint16))
    cv2.imwrite(str(tmp_path / "p12.png"), np.full((8, 8), 4095, np.uint16))
    with caplog.at_level("WARNING"):
        read_image(tmp_path / "full.png")
        assert "below 4096" not in caplog.text
        read_image(tmp_path / "p12.png")
        read_image(tmp_path / "p12.png")
    assert len([r for r in caplog.records if "below 4096" in r.message]) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty file"), (b"not an image at all", "not a readable image"), (None, "truncated PNG")],
)
def test_bad_images_name_the_file(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "bad.png"
    if content is None:
        make_image(path)
        path.write_bytes(path.read_bytes()[:-40])
    else:
        path.write_bytes(content)
    with pytest.raises(ImageReadError, match=message) as info:
        read_image(path)
    assert "bad.png" in str(info.value)


def test_truncated_jpeg_is_refused(tmp_path: Path) -> None:
    path = make_image(tmp_path / "x.jpg")
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(ImageReadError, match="truncated JPEG"):
        read_image(path)


def _jpeg_with_thumbnail(path: Path, image: np.ndarray) -> bytes:
    """A JPEG whose EXIF block holds a thumbnail (a whole JPEG, end marker included) ahead of the image's data."""
    from PIL import Image

    thumbnail = cv2.imencode(".jpg", image[::4, ::4])[1].tobytes()
    exif = Image.Exif()
    exif[0x0112] = 1
    Image.fromarray(image).save(path, "JPEG", exif=exif.tobytes() + thumbnail)
    return path.read_bytes()


def test_complete_files_with_trailing_data_read_and_cut_ones_do_not(tmp_path: Path) -> None:
    """Phones append a video after a JPEG's end, cameras metadata after a PNG's: complete files, which were refused
    as truncated; a JPEG cut after its thumbnail's end marker is still truncated."""
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for suffix in (".png", ".jpg"):
        path = tmp_path / f"trailer{suffix}"
        path.write_bytes(cv2.imencode(suffix, image)[1].tobytes() + b"ftypmp42" + bytes(2048) + b"\xff\xd8")
        assert read_image(path).shape == (64, 64, 3)
    data = _jpeg_with_thumbnail(tmp_path / "thumb.jpg", image)
    assert read_image(tmp_path / "thumb.jpg").shape == (64, 64, 3)
    (tmp_path / "cut.jpg").write_bytes(data[: data.index(b"\xff\xda", data.rindex(b"\xff\xd9", 0, 2000)) + 40])
    with pytest.raises(ImageReadError, match="truncated JPEG"):
        read_image(tmp_path / "cut.jpg")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_the_exif_orientation_is_applied_as_viewers_show_it(tmp_path: Path, fmt: str) -> None:
    """OpenCV's IMREAD_UNCHANGED ignores the tag (its TIFF reader aside): a mask drawn on the image as shown did not
    line up with the pixels read, and denoise's output came out turned."""
    from PIL import Image, ImageOps

    from robust_ad.data.images import read_raw

    pixels = np.random.default_rng(0).integers(0, 255, (24, 40, 3), dtype=np.uint8)
    pixels[:6, :6] = 255
    for orientation in range(1, 9):
        path = tmp_path / f"o{orientation}.{fmt.lower()}"
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(pixels).save(path, fmt, exif=exif, **({"quality": 100} if fmt in ("JPEG", "WEBP") else {}))
        shown = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
        np.testing.assert_array_equal(read_raw(path)[:, :, ::-1], shown, err_msg=f"orientation {orientation}")


def test_signed_integer_images_are_refused_in_one_line(tmp_path: Path) -> None:
    """An int16 TIFF (X-ray, thermal cameras) was clipped to [0, 1]: almost all white, and denoise wrote it back so."""
    cv2.imwrite(str(tmp_path / "signed.tif"), (np.arange(64 * 64) % 4000).astype(np.int16).reshape(64, 64))
    with pytest.raises(ImageReadError, match=r"signed\.tif: int16 pixels are not supported"):
        read_image(tmp_path / "signed.tif")


def test_masks_with_an_opaque_alpha_channel_mark_only_the_defect(tmp_path: Path) -> None:
    """Annotation tools save masks with an opaque black background: the maximum over the channels, alpha included,
    made every pixel a defect pixel. A mask drawn in alpha alone still reads."""
    from PIL import Image

    colour = np.zeros((32, 32), np.uint8)
    colour[4:8, 4:8] = 255
    opaque = np.full((32, 32), 255, np.uint8)
    Image.fromarray(np.dstack([colour, opaque]), "LA").save(tmp_path / "grey-alpha.png")  # OpenCV reads 4 channels
    cv2.imwrite(str(tmp_path / "rgba.png"), np.dstack([colour, colour, colour, opaque]))
    cv2.imwrite(str(tmp_path / "alpha-only.png"), np.dstack([np.zeros_like(colour)] * 3 + [colour]))
    for name in ("grey-alpha.png", "rgba.png", "alpha-only.png"):
        assert read_mask(tmp_path / name).sum() == 16, name


def test_a_mask_made_smaller_keeps_thin_defects_where_they_are() -> None:
    """Nearest-neighbour sampling took each cell's top-left pixel: a 1 px scratch vanished at 1/4 size unless its
    column was a multiple of 4, and blocks moved by half a pixel."""
    from robust_ad.data.images import resize_mask

    scratch = np.zeros((1024, 1024), bool)
    scratch[100:900, 501] = True
    small = resize_mask(scratch, 256)
    assert small[30:220, 125].all() and small.sum(axis=0).nonzero()[0].tolist() == [125]
    block = np.zeros((1024, 1024), bool)
    block[512:520, 512:520] = True
    assert np.argwhere(resize_mask(block, 256)).tolist() == [[128, 128], [128, 129], [129, 128], [129, 129]]
    np.testing.assert_array_equal(resize_mask(resize_mask(block, 256), 1024)[::4, ::4], resize_mask(block, 256))


def test_skip_bad_skips_and_default_raises(synth_root: Path, tmp_path: Path) -> None:
    for i in range(3):
        make_image(tmp_path / "good" / f"{i}.png", seed=i)
    (tmp_path / "good" / "3.png").write_bytes(b"garbage")
    ds = AnomalyDataset.load(tmp_path, "x", val_fraction=0.0)
    with pytest.raises(ImageReadError, match=r"3\.png.*data.skip_bad: true"):
        load_samples(ds.train, 16)
    assert len(load_samples(ds.train, 16, skip_bad=True).samples) == 3
    assert not check_dataset(ds).usable


def test_mask_size_mismatch_is_reported(tmp_path: Path) -> None:
    make_image(tmp_path / "good" / "g.png")
    make_image(tmp_path / "good" / "h.png")
    make_image(tmp_path / "defect" / "d.png", size=32)
    make_mask(tmp_path / "masks" / "d.png", size=16)
    report = check_dataset(AnomalyDataset.load(tmp_path, "x"))
    assert not report.usable and "differs" in report.reason()


def test_missing_and_empty_datasets(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        AnomalyDataset.load(tmp_path / "nope", "bottle")
    with pytest.raises(DataError, match="no dataset found"):
        AnomalyDataset.load(tmp_path, "bottle")
    (tmp_path / "bottle" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match="no normal training images"):
        AnomalyDataset.load(tmp_path, "bottle")


def test_read_mask_is_boolean(tmp_path: Path) -> None:
    mask = read_mask(make_mask(tmp_path / "m.png"))
    assert mask.dtype == bool and mask.sum() == 64


def test_check_notes_training_sizes_and_a_camera_mode_unlike_the_tests(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(8):  # a monochrome camera for the normal parts, two frame sizes
        size = (32, 32) if i % 2 else (40, 32)
        cv2.imwrite(_mkdir(tmp_path / "good", f"g{i}.png"), rng.integers(0, 255, size, np.uint8))
    for i in range(3):  # the defective ones in colour
        cv2.imwrite(_mkdir(tmp_path / "defect", f"d{i}.png"), rng.integers(0, 255, (32, 32, 3), np.uint8))
    report = check_dataset(AnomalyDataset.load(tmp_path, "parts", test_normal_fraction=0.25, val_fraction=0.0))
    assert report.usable
    assert any(n.startswith("training images come in 2 sizes") for n in report.notes)
    assert any("training images are all grey but 3 test images are colour" in n for n in report.notes)


def _mkdir(folder: Path, name: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / name)


def test_check_notes_empty_defect_folders_and_masks_of_no_defect_image(tmp_path: Path) -> None:
    """A failed copy (an empty defect-type folder) or a naming slip (masks of good images, or of no image) would
    drop a defect type or its pixel metrics without a word: check says so; a clean dataset gets no such note."""
    synthesize(tmp_path, "bottle", size=32, n_train=6, n_test_good=2, n_per_defect=1, seed=0)
    assert not check_dataset(AnomalyDataset.load(tmp_path, "bottle")).notes
    base = tmp_path / "bottle"
    (base / "test" / "cracked").mkdir()
    make_mask(base / "ground_truth" / "good" / "000_mask.png")
    report = check_dataset(AnomalyDataset.load(tmp_path, "bottle"))
    assert report.usable
    assert f"{base / 'test' / 'cracked'} holds no images: that defect type is not tested" in report.notes
    assert any(n.startswith("1 mask file under ") and "(one is good/000_mask.png)" in n for n in report.notes)
    for i in range(3):  # the folder layout: a mask named after no defect image
        cv2.imwrite(_mkdir(tmp_path / "plain" / "good", f"g{i}.png"), np.zeros((32, 32), np.uint8))
    make_image(Path(_mkdir(tmp_path / "plain" / "defect", "d0.png")))
    make_mask(Path(_mkdir(tmp_path / "plain" / "masks", "d0.png")))
    make_mask(tmp_path / "plain" / "masks" / "d9.png")
    notes = check_dataset(AnomalyDataset.load(tmp_path / "plain", "x", test_normal_fraction=0.34)).notes
    assert any("belongs to no defect image and is not used (one is d9.png)" in n for n in notes)


def test_check_notes_images_that_the_layout_does_not_read(tmp_path: Path) -> None:
    """good/day2/, train/good/<sub>/ and a bad/ folder beside defect/ were left out while the check said 'usable'."""
    synthesize(tmp_path, "bottle", size=32, n_train=6, n_test_good=2, n_per_defect=1, seed=0)
    make_image(tmp_path / "bottle" / "train" / "good" / "day2" / "a.png")
    make_image(tmp_path / "bottle" / "train" / "good" / "day2" / "b.png")
    notes = check_dataset(AnomalyDataset.load(tmp_path, "bottle")).notes
    assert (
        f"2 images under {tmp_path / 'bottle'} are not read (one is train/good/day2/a.png): the mvtec layout reads"
        in (" ".join(notes))
    )
    for i in range(3):
        make_image(tmp_path / "plain" / "good" / f"g{i}.png", seed=i)
    make_image(tmp_path / "plain" / "defect" / "d0.png")
    make_image(tmp_path / "plain" / "bad" / "ng.png")
    notes = check_dataset(AnomalyDataset.load(tmp_path / "plain", "x", test_normal_fraction=0.34)).notes
    assert any(n.startswith(f"1 image under {tmp_path / 'plain'} is not read (one is bad/ng.png)") for n in notes)


def test_a_multi_page_tiff_says_that_only_its_first_page_is_read(tmp_path: Path, monkeypatch, caplog) -> None:
    from robust_ad.data import images

    monkeypatch.setattr(images, "_WARNED", set())
    pages = [np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 200, np.uint8)]
    cv2.imwritemulti(str(tmp_path / "stack.tif"), pages)
    cv2.imwrite(str(tmp_path / "one.tif"), pages[1])
    assert read_raw(tmp_path / "one.tif").max() == 200 and "pages" not in caplog.text
    assert read_raw(tmp_path / "stack.tif").max() == 0
    assert f"{tmp_path / 'stack.tif'} holds 2 pages: only the first is read" in caplog.text


def test_a_jpeg_mask_is_binarised_at_half_its_largest_value() -> None:
    """A JPEG mask's ringing (small values around the defect) counted as defect: defects came out 2-4 times larger.
    A lossless mask keeps every non-zero pixel (VisA numbers its regions 1, 2, ...)."""
    ringing = np.array([[0, 3, 12, 250], [255, 9, 0, 0]], np.uint8)
    assert to_mask(ringing, lossy=True).tolist() == [[False, False, False, True], [True, False, False, False]]
    assert to_mask(ringing).tolist() == [[False, True, True, True], [True, True, False, False]]
    assert to_mask(np.array([[0, 1], [2, 0]], np.uint8), lossy=True).tolist() == [[False, False], [True, False]]
    assert not to_mask(np.zeros((2, 2), np.uint8), lossy=True).any()


def test_check_notes_lossy_and_inverted_masks_and_takes_any_mask_suffix(tmp_path: Path) -> None:
    synthesize(tmp_path, "bottle", size=32, n_train=6, n_test_good=2, n_per_defect=2, seed=0)
    truth = tmp_path / "bottle" / "ground_truth"
    masks = sorted(truth.rglob("*_mask.png"))
    inverted = read_raw(masks[0])
    cv2.imwrite(str(masks[0]), 255 - inverted)
    lossy = masks[1].with_suffix(".jpg")  # an MVTec mask saved as JPEG: matched, and noted
    cv2.imwrite(str(lossy), read_raw(masks[1]), [cv2.IMWRITE_JPEG_QUALITY, 50])
    masks[1].unlink()
    dataset = AnomalyDataset.load(tmp_path, "bottle")
    assert lossy in {s.mask_path for s in dataset.test}
    notes = " ".join(check_dataset(dataset).notes)
    assert f"mark more than half of their image as defective (an inverted mask?): 1 (one is {masks[0]})" in notes
    assert f"are lossy JPEGs (stored as PNG, a mask keeps its edges): 1 (one is {lossy})" in notes


def test_a_line_with_good_parts_only_checks_as_trainable(tmp_path: Path) -> None:
    """'datasets check' refused what 'train' accepts (a new line, no defects collected yet)."""
    for i in range(4):
        make_image(tmp_path / "good" / f"{i}.png", seed=i)
    report = check_dataset(AnomalyDataset.load(tmp_path, "x"))
    assert report.usable and any("has no test images: it trains" in note for note in report.notes)
