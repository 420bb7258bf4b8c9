"""File-backed sources (directory, csv): formats and modes, bad files, decoded caches,
streaming statistics, resume and cache-independent results."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kcnn.data.cache import attach_cache, split_fingerprint
from kcnn.data.dataset import FileSplit
from kcnn.data.images import BadImage, decode
from kcnn.data.sources import load_dataset
from kcnn.data.stats import channel_stats
from kcnn.errors import DataError
from kcnn.recipes import loads


# ----------------------------------------------------------------------------- decoding
def test_decode_formats_and_modes(tmp_path):
    size = (4, 6)  # (height, width): no resize for 6×4 images
    gray = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    assert decode(tmp_path / "gray.png", size, 1)[..., 0].tolist() == gray.tolist()
    rgb = decode(tmp_path / "gray.png", size, 3)
    assert rgb.shape == (4, 6, 3) and np.all(rgb[..., 0] == rgb[..., 2])

    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red: the colour is kept
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert decode(tmp_path / "rgba.png", size, 3)[0, 0].tolist() == [200, 0, 0]

    pal = Image.new("P", (6, 4))
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.putpixel((2, 1), 1)
    pal.save(tmp_path / "palette.png")
    out = decode(tmp_path / "palette.png", size, 3)
    assert out[1, 2].tolist() == [10, 200, 30] and out[0, 0].tolist() == [0, 0, 0]

    deep = np.full((4, 6), 65535, np.uint16)
    deep[0, 0], deep[0, 1] = 0, 32896  # 32896 / 65535 · 255 = 128.0
    Image.fromarray(deep).save(tmp_path / "deep.png")
    out = decode(tmp_path / "deep.png", size, 1)[..., 0]
    assert (out[0, 0], out[0, 1], out[3, 5]) == (0, 128, 255)  # scaled, not clipped

    Image.new("CMYK", (6, 4), (255, 0, 0, 0)).save(tmp_path / "cmyk.jpg")  # pure cyan
    r, g, b = decode(tmp_path / "cmyk.jpg", size, 3)[2, 3].tolist()
    assert r < 30 and g > 220 and b > 220

    for name in ("x.webp", "x.tiff", "x.bmp", "x.gif"):
        Image.fromarray(np.full((4, 6, 3), 90, np.uint8)).save(tmp_path / name)
        assert abs(int(decode(tmp_path / name, size, 3).mean()) - 90) <= 2, name


def test_exif_orientation_is_applied(tmp_path):
    # Stored 6 wide × 4 high with a white left column; orientation 6 means "rotate 90° clockwise
    # to display", so the viewer sees 4 wide × 6 high with the white row on top.
    stored = np.zeros((4, 6), np.uint8)
    stored[:, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored, "L").save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    out = decode(tmp_path / "rotated.jpg", (6, 4), 1)[..., 0]
    assert out.shape == (6, 4)
    assert out[0].mean() > 200 and out[-1].mean() < 50


def test_resize_and_corrupt_file(tmp_path):
    Image.fromarray(np.full((30, 40, 3), 77, np.uint8)).save(tmp_path / "big.png")
    assert decode(tmp_path / "big.png", (8, 8), 3).shape == (8, 8, 3)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(BadImage, match="broken.png: unreadable image"):
        decode(tmp_path / "broken.png", (8, 8), 3)


# ----------------------------------------------------------------------------- folders
def make_folder(root: Path, per_class: int = 12, classes=("a", "b"), size=(10, 12)) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = (rng.random((*size, 3)) * 60 + 120 * c).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i:03d}.{('png', 'jpg', 'webp')[i % 3]}")
    return root


def recipe_for(root: Path, **data) -> str:
    extra = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in data.items())
    return (f"name: folder\nseed: 0\ndata:\n  source: {{type: directory, path: {root}, "
            f"image_size: [8, 8]}}\n  split: {{val: 0.2, test: 0.25}}\n{extra}"
            f"model: {{name: simple_cnn, filters: [4, 8], batch_norm: true, dropout: 0.2}}\n"
            f"train: {{epochs: 2, batch_size: 8, verbose: 0, callbacks: {{tensorboard: false}}}}\n"
            f"evaluate: {{plots: false}}\n")


def test_directory_source_lists_without_decoding(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "imgs")
    import kcnn.data.images as images

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded while listing")

    monkeypatch.setattr(images, "decode", no_decoding)
    data = load_dataset(loads(recipe_for(root)).data)
    assert isinstance(data.train, FileSplit)
    assert len(data.train) + len(data.val) + len(data.test) == 24
    assert data.input_shape == (8, 8, 3) and data.class_names == ["a", "b"]
    assert np.bincount(data.test.y).tolist() == [3, 3]


def test_bad_files_by_policy(tmp_path):
    root = make_folder(tmp_path / "imgs")
    (root / "a" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (root / "b" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"imgs: 1 file is not an image kcnn reads \(.*notes.txt\); remove it or set "
                                        r"data.source.on_bad_image: skip"):
        load_dataset(loads(recipe_for(root)).data)
    (root / "b" / "notes.txt").unlink()
    with pytest.raises(DataError, match=r"zz_broken.jpg: unreadable image .*on_bad_image: skip"):
        load_dataset(loads(recipe_for(root)).data)
    (root / "b" / "notes.txt").write_text("not an image")
    text = recipe_for(root).replace("image_size: [8, 8]}", "image_size: [8, 8], on_bad_image: skip}")
    data = load_dataset(loads(text).data)
    assert sorted(Path(p).name for p, _ in data.skipped) == ["notes.txt", "zz_broken.jpg"]
    assert len(data.train) + len(data.val) + len(data.test) == 24


def test_empty_and_missing_class_folders(tmp_path):
    root = make_folder(tmp_path / "imgs")
    (root / "c").mkdir()
    with pytest.raises(DataError, match=r"class folder 'c' has no images"):
        load_dataset(loads(recipe_for(root)).data)
    (root / "c").rmdir()
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset(loads(recipe_for(tmp_path / "flat")).data)


def test_csv_source_is_file_backed_with_split_and_costs(tmp_path):
    root = make_folder(tmp_path / "imgs", per_class=6)
    rows = ["image,label,cost,part"]
    for i, f in enumerate(sorted(root.glob("*/*"))):
        rows.append(f"{f.relative_to(tmp_path)},{f.parent.name},{1 + i % 2},"
                    f"{'test' if i % 4 == 0 else 'train'}")
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    text = (f"name: csv\ndata:\n  source: {{type: csv, path: {tmp_path / 'list.csv'}, "
            f"weight_column: cost, split_column: part, image_size: [8, 8]}}\n"
            f"model: {{name: simple_cnn}}\n")
    data = load_dataset(loads(text).data)
    assert isinstance(data.train, FileSplit) and len(data.test) == 3
    assert data.class_names == ["a", "b"] and set(data.train.w.tolist()) == {1.0, 2.0}
    assert data.train.images([0]).shape == (1, 8, 8, 3)


# ----------------------------------------------------------------------------- caches
def test_disk_cache_is_reused_and_invalidated(tmp_path):
    root = make_folder(tmp_path / "imgs", per_class=6)
    recipe = loads(recipe_for(root, cache="disk", cache_dir=str(tmp_path / "cache")))
    data = load_dataset(recipe.data)
    folders = {p.name for p in (tmp_path / "cache" / "images").iterdir()}
    assert len(folders) == 3  # train, val, test
    plain = load_dataset(loads(recipe_for(root)).data)
    np.testing.assert_array_equal(data.train.images(), plain.train.images())

    again = load_dataset(recipe.data)  # same files: the same caches, nothing rebuilt
    assert {p.name for p in (tmp_path / "cache" / "images").iterdir()} == folders
    assert again.train.cache.path == data.train.cache.path

    key = split_fingerprint(plain.train)
    victim = Path(plain.train.files[0])
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))
    assert split_fingerprint(plain.train) != key  # touched
    victim.unlink()
    assert split_fingerprint(load_dataset(loads(recipe_for(root)).data).train) != key  # removed
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(root / "a" / "new.png")
    load_dataset(recipe.data)
    assert len({p.name for p in (tmp_path / "cache" / "images").iterdir()}) > len(folders)


def test_half_written_cache_is_never_used(tmp_path):
    root = make_folder(tmp_path / "imgs", per_class=4)
    data = load_dataset(loads(recipe_for(root)).data)
    split = data.train
    folder = tmp_path / "cache" / "images" / split_fingerprint(split)
    folder.mkdir(parents=True)
    (folder / "images.u8").write_bytes(b"\0" * 10)  # a crash mid-build (no complete meta)
    (folder / "meta.json").write_text(json.dumps({"complete": False}))
    attach_cache(data, "disk", str(tmp_path / "cache"))
    np.testing.assert_array_equal(split.images(), load_dataset(
        loads(recipe_for(root)).data).train.images())
    assert json.loads((folder / "meta.json").read_text())["complete"] is True


def test_streaming_statistics_match_numpy(tmp_path):
    root = make_folder(tmp_path / "imgs", per_class=10)
    split = load_dataset(loads(recipe_for(root)).data).train
    x = split.images().astype(np.float64) / 255
    mean, var = channel_stats(split, max_samples=10_000, scale=1 / 255)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-10)
    np.testing.assert_allclose(var, x.var(axis=(0, 1, 2)), rtol=1e-10)
    sub_mean, _ = channel_stats(split, max_samples=5, seed=3)
    assert not np.allclose(sub_mean, mean * 255)  # a sample of 5 images, not all


@pytest.mark.slow
def test_file_backed_training_resumes_and_ignores_the_cache(tmp_path):
    """cache none vs disk give the same run; a resumed file-backed run the same history."""
    from kcnn.engine.train import train

    root = make_folder(tmp_path / "imgs", per_class=10)
    plain = train(loads(recipe_for(root, augment={"translate": 0.1, "flip": True})),
                  run_dir=tmp_path / "plain")
    cached = train(loads(recipe_for(root, augment={"translate": 0.1, "flip": True}, cache="disk",
                                    cache_dir=str(tmp_path / "cache"))), run_dir=tmp_path / "disk")
    h_plain = (plain / "history.csv").read_text()
    assert h_plain == (cached / "history.csv").read_text()
    m1, m2 = (json.loads((r / "metrics.json").read_text()) for r in (plain, cached))
    assert m1["accuracy"] == m2["accuracy"] and m1["loss"] == pytest.approx(m2["loss"], rel=1e-6)

    one = loads(recipe_for(root, augment={"translate": 0.1, "flip": True})).model_copy(deep=True)
    one.train.epochs = 1
    half = train(one, run_dir=tmp_path / "half")
    text = (half / "recipe.yaml").read_text().replace("epochs: 1", "epochs: 2")
    (half / "recipe.yaml").write_text(text)
    state = json.loads((half / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 1
    resumed = train(resume=half)
    assert (resumed / "history.csv").read_text() == h_plain


def test_decode_error_while_streaming_names_the_file(tmp_path):
    """A body-corrupt file passes the header check; decoding it inside tf.data later gives
    one line naming it."""
    import keras

    from kcnn.engine.evaluate import predict_logits

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray((rng.random((40, 50, 3)) * 255).astype(np.uint8)).save(buf, format="PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ok.png")
    files = np.asarray([str(tmp_path / "ok.png"), str(tmp_path / "cut.png")], object)
    split = FileSplit(files, np.zeros(2, np.int64), None, (8, 8), 3)
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    with pytest.raises(DataError, match=r"cut.png: unreadable image \(image file is truncated\) "
                                        r"\(found while predicting"):
        predict_logits(model, split, batch_size=1)


def test_tensorflow_decodes_only_what_it_reads_exactly(tmp_path):
    """GIFs (3 channels only in TF) and palette BMPs (TF ignores the colour table) go to
    Pillow; the graph decoder then gives Pillow's pixels in grayscale too."""
    from kcnn.data.decode import decode_files
    from kcnn.data.images import check_header, decode

    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0], rgb[2:5, 3:6, 1] = 200, 90
    Image.fromarray(rgb).save(tmp_path / "a.gif")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.bmp")
    Image.fromarray(rgb).save(tmp_path / "c.bmp")
    Image.fromarray(rgb).save(tmp_path / "c.png")
    assert [check_header(tmp_path / n)[1] for n in ("a.gif", "p.bmp", "c.bmp", "c.png")] == [
        False, False, True, True]
    files = np.asarray([str(tmp_path / n) for n in ("a.gif", "p.bmp", "c.png")], object)
    for channels in (1, 3):
        native = np.asarray([check_header(f)[1] for f in files])
        split = FileSplit(files, np.zeros(3, np.int64), None, (8, 8), channels, native=native)
        got = np.concatenate(list(decode_files(split, np.arange(3), 3)))
        want = np.stack([decode(f, (8, 8), channels) for f in files])
        np.testing.assert_allclose(got.astype(int), want.astype(int), atol=1)


def test_a_corrupt_file_while_caching_or_computing_statistics_is_one_line(tmp_path):
    root = make_folder(tmp_path / "imgs", per_class=4)
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray((rng.random((40, 50, 3)) * 255).astype(np.uint8)).save(buf, format="PNG")
    (root / "a" / "zz_cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    cached = loads(recipe_for(root, cache="disk", cache_dir=str(tmp_path / "cache")))
    with pytest.raises(DataError, match=r"zz_cut.png: unreadable image .*found while building "
                                        r"the disk cache"):
        load_dataset(cached.data)
    files = np.asarray([str(root / "a" / "000.png"), str(root / "a" / "zz_cut.png")], object)
    split = FileSplit(files, np.zeros(2, np.int64), None, (8, 8), 3,
                      native=np.ones(2, bool))  # the cut PNG's header is fine: TF decodes it
    with pytest.raises(DataError, match=r"zz_cut.png: .*found while computing the standardization"):
        channel_stats(split, max_samples=10_000)
