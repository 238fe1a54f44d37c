"""Data sets on the real shared files (small slices) and on small temporary files."""

import gzip
import io
import os
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from fastssl.data import (
    CharTokenizer,
    ImageDataset,
    ImageFolderDataset,
    TextDataset,
    cache_dir,
    data_root,
    datasets,
    load_cifar10,
    load_image_dataset,
    load_mnist,
    load_text,
    load_text_dataset,
    resolve_data,
)
from fastssl.ops.augment import PackedImages

try:
    CIFAR = resolve_data("cifar10")
except ValueError as exc:  # a clone without ../shared/data beside it (and no FASTSSL_DATA)
    pytest.skip(f"the real data is not reachable: {exc}", allow_module_level=True)


def decode(jpeg: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(jpeg)) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def cifar_npz():
    with np.load(CIFAR) as archive:
        return {key: archive[key] for key in ("jpeg_bytes", "offsets", "labels", "is_train", "classes")}


def cifar_image(npz, i):
    return decode(npz["jpeg_bytes"][npz["offsets"][i]:npz["offsets"][i + 1]].tobytes())


# locating


def test_named_data_resolve_under_the_data_root():
    root = data_root()
    assert (root / "cifar10").is_dir()
    for name, relative in datasets.NAMED_DATA.items():
        assert resolve_data(name) == (root / relative).resolve()


def test_fastssl_data_env_takes_precedence(tmp_path, monkeypatch):
    (tmp_path / "mnist").mkdir()
    np.savez(tmp_path / "mnist" / "mnist_test.npz", x=np.zeros((5, 4, 4), np.uint8))
    monkeypatch.setenv("FASTSSL_DATA", str(tmp_path))
    assert data_root() == tmp_path.resolve()
    assert resolve_data("mnist") == (tmp_path / "mnist" / "mnist_test.npz").resolve()


def test_resolve_errors_list_accepted_forms_and_places(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"no such data set name or path.*Accepted: a name \(cifar10, mnist"):
        resolve_data(tmp_path / "nowhere.npz")
    (tmp_path / "table.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        resolve_data(tmp_path / "table.csv")
    monkeypatch.setattr(datasets, "_data_root_candidates", lambda: [tmp_path / "a", tmp_path / "b"])
    looked = rf"'cifar10' not found; looked at: {tmp_path}/a/cifar10/.*, {tmp_path}/b"
    with pytest.raises(ValueError, match=looked):
        resolve_data("cifar10")
    with pytest.raises(ValueError, match="no data root found; looked at"):
        data_root()


def test_cache_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTSSL_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("FASTSSL_CACHE")
    assert cache_dir() == datasets.Path.home() / ".cache" / "fastssl"


# CIFAR-10


def test_cifar10_slice_decodes_once_into_a_memory_mapped_cache(tmp_path, cifar_npz, monkeypatch):
    train = load_cifar10("train", limit=200, cache=tmp_path, progress=False)
    assert isinstance(train, ImageDataset) and len(train) == 200
    assert train.images.shape == (200, 32, 32, 3) and train.images.dtype == np.uint8
    assert train.classes == [str(c) for c in cifar_npz["classes"]] and train.num_classes == 10
    first_train = int(np.flatnonzero(cifar_npz["is_train"])[0])
    np.testing.assert_array_equal(train.labels, cifar_npz["labels"][first_train:first_train + 200])
    for j in (0, 77, 199):
        np.testing.assert_array_equal(train.images[j], cifar_image(cifar_npz, first_train + j))
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".npy"] == [p.name for p in tmp_path.iterdir()]

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cache must be reused")

    monkeypatch.setattr(datasets, "decode_jpegs", no_decoding)
    again = load_cifar10("train", limit=200, cache=tmp_path)
    assert isinstance(again.images, np.memmap)
    np.testing.assert_array_equal(again.images, train.images)

    images, labels = again.batch(torch.tensor([5, 0, 199]))
    assert images.shape == (3, 32, 32, 3) and images.dtype == torch.uint8
    np.testing.assert_array_equal(images.numpy(), train.images[[5, 0, 199]])
    assert labels.dtype == torch.int64 and labels.tolist() == train.labels[[5, 0, 199]].tolist()
    out = torch.empty(3, 32, 32, 3, dtype=torch.uint8)
    assert again.batch([5, 0, 199], out=out)[0] is out and torch.equal(out, images)
    image, label = again[7]
    assert image.shape == (32, 32, 3) and label == int(train.labels[7])
    with pytest.raises(ValueError, match=r"indices: expected values in \[0, 200\)"):
        again.batch([200])
    with pytest.raises(ValueError, match="out: expected a contiguous CPU uint8 tensor of shape"):
        again.batch([1, 2], out=torch.empty(3, 32, 32, 3, dtype=torch.uint8))


def test_cifar10_test_split_is_the_first_10000(tmp_path, cifar_npz):
    test = load_cifar10("test", limit=20, cache=tmp_path, progress=False)
    assert not cifar_npz["is_train"][:10000].any()
    np.testing.assert_array_equal(test.images[3], cifar_image(cifar_npz, 3))
    np.testing.assert_array_equal(test.labels, cifar_npz["labels"][:20])


def write_packed_jpegs(path, npz, count):
    """A small packed-JPEG npz in CIFAR's layout, without is_train (so it gets the seeded split)."""
    offsets = npz["offsets"][: count + 1]
    np.savez(path, jpeg_bytes=npz["jpeg_bytes"][: offsets[-1]], offsets=offsets, labels=npz["labels"][:count])


def test_stale_or_broken_cache_is_rebuilt_and_replaced(tmp_path, cifar_npz):
    source, cache = tmp_path / "tiny.npz", tmp_path / "cache"
    write_packed_jpegs(source, cifar_npz, 12)
    first = load_image_dataset(source, "all", cache=cache, progress=False)
    assert len(first) == 12 and first.classes is None and first.num_classes == 1
    np.testing.assert_array_equal(first.images[11], cifar_image(cifar_npz, 11))
    (old,) = cache.iterdir()

    # A rewritten source (new mtime) gets a new cache; the stale one is removed.
    os.utime(source, ns=(time.time_ns(), time.time_ns() + 10**9))
    load_image_dataset(source, "all", cache=cache, progress=False)
    (new,) = cache.iterdir()
    assert new.name != old.name and new.name.startswith("tiny-")

    # A truncated cache (a crash before the atomic rename cannot leave one, but a full disk or a user can).
    with open(new, "r+b") as f:
        f.truncate(200)
    rebuilt = load_image_dataset(source, "all", cache=cache, progress=False)
    np.testing.assert_array_equal(rebuilt.images, first.images)
    assert [p.name for p in cache.iterdir()] == [new.name]

    train = load_image_dataset(source, "train", cache=cache, progress=False)
    test = load_image_dataset(source, "test", cache=cache, progress=False)
    assert len(train) + len(test) == 12 and len(test) == round(12 * datasets.TEST_FRACTION)


@pytest.mark.slow
def test_cifar10_full_cache_in_the_user_cache_dir(cifar_npz):
    """The real path: all 60,000 images decoded once (~25 s on the 2-core dev machine) into cache_dir(), then
    memory-mapped; later runs only open the cache."""
    train, test = load_cifar10("train", progress=False), load_cifar10("test", progress=False)
    assert isinstance(train.images, np.memmap) and train.images.shape == (50000, 32, 32, 3)
    assert len(test) == 10000
    assert np.bincount(train.labels).tolist() == [5000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    images, labels = train.batch([0, 49999])
    np.testing.assert_array_equal(images[1].numpy(), cifar_image(cifar_npz, 59999))
    assert labels.tolist() == cifar_npz["labels"][[10000, 59999]].tolist()


# npz arrays


def test_mnist_seeded_split_of_the_test_file():
    with np.load(resolve_data("mnist")) as archive:
        x, y = archive["x"], archive["y"]
    train, test, everything = load_mnist("train"), load_mnist("test"), load_mnist("all")
    assert (len(train), len(test), len(everything)) == (8000, 2000, 10000)
    assert train.image_shape == (28, 28, 1) and train.num_classes == 10
    np.testing.assert_array_equal(everything.images[..., 0], x)
    index = datasets._split_indices(10000, "test")
    np.testing.assert_array_equal(test.images[..., 0], x[index])
    np.testing.assert_array_equal(test.labels, y[index])
    assert not set(index) & set(datasets._split_indices(10000, "train"))
    np.testing.assert_array_equal(load_mnist("test").labels, test.labels)
    assert len(load_mnist("train", limit=10)) == 10


def test_uncompressed_npz_is_memory_mapped(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (7, 5, 6, 3), dtype=np.uint8)
    y = np.arange(7) % 3
    np.savez(tmp_path / "rgb.npz", x=x, y=y, classes=np.array(["a", "b", "c"]))
    data = load_image_dataset(tmp_path / "rgb.npz", "all")
    assert isinstance(data.images, np.memmap) and data.classes == ["a", "b", "c"]
    np.testing.assert_array_equal(data.images, x)
    images, labels = data.batch([6, 1])
    np.testing.assert_array_equal(images.numpy(), x[[6, 1]])
    assert labels.tolist() == [0, 1]

    np.savez_compressed(tmp_path / "gray.npz", x=x[..., 0])
    gray = load_image_dataset(tmp_path / "gray.npz", "all")
    assert gray.image_shape == (5, 6, 1) and gray.labels is None and gray[0][1] == -1
    assert gray.batch([0])[1] is None

    np.savez(tmp_path / "float.npz", x=x.astype(np.float32))
    with pytest.raises(ValueError, match="x must be uint8"):
        load_image_dataset(tmp_path / "float.npz")
    np.savez(tmp_path / "other.npz", z=x)
    with pytest.raises(ValueError, match="needs x .* or jpeg_bytes"):
        load_image_dataset(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="split: expected one of"):
        load_image_dataset(tmp_path / "rgb.npz", "val")
    with pytest.raises(ValueError, match="is a text corpus"):
        load_image_dataset("shakespeare")


# image folders


def make_folder(root):
    """cat/: RGB JPEGs; dog/: gray, RGBA and palette PNGs; one corrupt file; one non-image file."""
    rng = np.random.default_rng(0)
    (root / "cat").mkdir(parents=True)
    (root / "dog" / "nested").mkdir(parents=True)
    expected = {}
    for i, (h, w) in enumerate([(17, 23), (40, 9)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "cat" / f"{i}.jpg")
        expected[f"cat/{i}.jpg"] = (h, w)
    gray = rng.integers(0, 256, (31, 8), dtype=np.uint8)
    Image.fromarray(gray).save(root / "dog" / "gray.png")
    rgba = rng.integers(0, 256, (12, 12, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(root / "dog" / "nested" / "rgba.PNG")
    indices = rng.integers(0, 4, (6, 5), dtype=np.uint8)
    palette = Image.fromarray(indices, "P")
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]], np.uint8)
    palette.putpalette(colours.reshape(-1).tolist())
    palette.save(root / "dog" / "palette.png", transparency=0)
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "dog" / "notes.txt").write_text("ignored")
    return gray, rgba, colours[indices]


def test_image_folder_packs_mixed_sizes_and_skips_corrupt_files(tmp_path):
    gray, rgba, palette = make_folder(tmp_path / "pets")
    with pytest.warns(UserWarning, match=r"skipped 1 of 6 images that could not be read, first: .*broken"):
        data = load_image_dataset(tmp_path / "pets", "all", progress=False)
    assert isinstance(data, ImageFolderDataset) and len(data) == 5
    assert data.classes == ["cat", "dog"] and data.labels.tolist() == [0, 0, 1, 1, 1]
    assert [f.name for f in data.files] == ["0.jpg", "1.jpg", "gray.png", "palette.png", "rgba.PNG"]
    shapes = [tuple(data[i][0].shape) for i in range(5)]
    assert shapes == [(17, 23, 3), (40, 9, 3), (31, 8, 3), (6, 5, 3), (12, 12, 3)]
    np.testing.assert_array_equal(data[2][0].numpy(), np.repeat(gray[..., None], 3, axis=2))
    np.testing.assert_array_equal(data[3][0].numpy(), palette)
    np.testing.assert_array_equal(data[4][0].numpy(), rgba[..., :3])

    packed, labels = data.batch(torch.tensor([3, 0, 2]))
    assert isinstance(packed, PackedImages) and packed.channels == 3
    packed.validate()
    assert packed.heights.tolist() == [6, 17, 31] and packed.widths.tolist() == [5, 23, 8]
    for b, i in enumerate([3, 0, 2]):
        assert torch.equal(packed.image(b), data[i][0])
    assert labels.tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="empty batch"):
        data.batch([])


def test_image_folder_splits(tmp_path):
    rng = np.random.default_rng(1)
    for split, count in (("train", 3), ("val", 2)):
        for cls in ("a", "b"):
            (tmp_path / "split" / split / cls).mkdir(parents=True)
            for i in range(count):
                image = rng.integers(0, 256, (4 + i, 5, 3), dtype=np.uint8)
                Image.fromarray(image).save(tmp_path / "split" / split / cls / f"{i}.png")
    sizes = {s: len(load_image_dataset(tmp_path / "split", s, progress=False))
             for s in ("train", "test", "all")}
    assert sizes == {"train": 6, "test": 4, "all": 10}

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (3, 3), dtype=np.uint8)).save(flat / f"{i:02d}.png")
    train = load_image_dataset(flat, "train", progress=False)
    test = load_image_dataset(flat, "test", progress=False)
    assert train.labels is None and train.classes is None and train[0][1] == -1
    assert sorted(f.name for f in train.files + test.files) == [f"{i:02d}.png" for i in range(10)]
    assert len(test) == 2 and len(load_image_dataset(flat, "all", limit=4, progress=False)) == 4

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"nope")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="none of the 1 image files could be read"):
            load_image_dataset(tmp_path / "bad", "all", progress=False)
    with pytest.raises(ValueError, match="only image folders take these options"):
        load_image_dataset("mnist", max_side=8)


def test_image_folder_max_side_shrinks_large_images(tmp_path):
    (tmp_path / "big" / "x").mkdir(parents=True)
    Image.fromarray(np.zeros((300, 120, 3), np.uint8)).save(tmp_path / "big" / "x" / "a.jpg")
    data = load_image_dataset(tmp_path / "big", "all", max_side=64, progress=False)
    assert tuple(data[0][0].shape) == (64, 26, 3)


# text


def test_load_text_plain_and_gzip(tmp_path):
    tiny = load_text("shakespeare")
    assert len(tiny) == 1_115_394 and tiny.startswith("First Citizen:")
    assert len(load_text("shakespeare_complete")) == 5_057_321
    with gzip.open(tmp_path / "t.txt.gz", "wt", encoding="utf-8") as f:
        f.write("héllo\nwörld")
    assert load_text(tmp_path / "t.txt.gz") == "héllo\nwörld"
    with pytest.raises(ValueError, match="expected a .txt or .txt.gz file"):
        load_text("mnist")


def test_char_tokenizer_round_trip_and_special_ids():
    text = load_text("shakespeare")
    tokenizer = CharTokenizer(text)
    assert len(tokenizer.chars) == 65 and tokenizer.chars == sorted(set(text))
    assert (tokenizer.pad_id, tokenizer.mask_id, tokenizer.vocab_size) == (65, 66, 67)
    ids = tokenizer.encode(text[:5000])
    assert ids.dtype == torch.int64 and int(ids.max()) < 65
    assert tokenizer.decode(ids) == text[:5000]
    assert tokenizer.encode("\n").tolist() == [0]
    special = [tokenizer.encode("A").item(), tokenizer.mask_id, tokenizer.pad_id]
    assert tokenizer.decode(special) == "A[MASK][PAD]"
    with pytest.raises(ValueError, match=r"character '€' at position 2 is not in the vocabulary"):
        tokenizer.encode("ab€")
    with pytest.raises(ValueError, match=r"ids: expected values in \[0, 67\)"):
        tokenizer.decode([67])
    unicode = CharTokenizer("ab€𝔘")
    assert unicode.decode(unicode.encode("𝔘€ba")) == "𝔘€ba"


def test_text_dataset_split_and_windows():
    data = load_text_dataset("shakespeare")
    text = load_text("shakespeare")
    assert len(data.val_tokens) == len(text) // 10
    assert len(data.train_tokens) + len(data.val_tokens) == len(text)
    assert data.tokenizer.decode(data.val_tokens[:50]) == text[len(data.train_tokens):][:50]
    windows = data.sample(8, 33, generator=torch.Generator().manual_seed(0))
    assert windows.shape == (8, 33) and windows.dtype == torch.int64
    again = data.sample(8, 33, generator=torch.Generator().manual_seed(0))
    assert torch.equal(windows, again)
    train_text = text[: len(data.train_tokens)]
    for row in windows:
        assert data.tokenizer.decode(row) in train_text
    val = data.sample(4, 16, split="val", generator=torch.Generator().manual_seed(1))
    assert data.tokenizer.decode(val[0]) in text[len(data.train_tokens):]
    with pytest.raises(ValueError, match="block_size: expected in"):
        data.sample(1, len(data.val_tokens) + 1, split="val")
    small = TextDataset("abcabcabcd", val_fraction=0.2)
    assert small.tokenizer.decode(small.val_tokens) == "cd"
