"""fastssl.ops.augment: every backend against the float64 reference, per operation and for the whole pipeline."""

import colorsys

import pytest
import torch

from fastssl.ops.augment import (
    AugmentParams,
    PackedImages,
    _hsv_to_rgb,
    _rgb_to_hsv,
    augment,
    augment_reference,
    gaussian_kernel1d,
)
from tests.conftest import assert_error_within, fused_backends, run_without_host_sync

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# Issue 3's bound on the error of a view before normalisation.
PIXEL_ATOL = 1.0 / 255
CPP = [p for p in fused_backends(op="augment") if p.values[0] == "cpp"]


def _images(batch, height, width, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, height, width, channels), dtype=torch.uint8, generator=g)


def _packed(sizes, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return PackedImages.from_list(
        [torch.randint(0, 256, (h, w, channels), dtype=torch.uint8, generator=g) for h, w in sizes])


def _sizes(images):
    if isinstance(images, PackedImages):
        return images.heights, images.widths
    b, h, w, _ = images.shape
    return torch.full((b,), h), torch.full((b,), w)


def random_params(images, seed=0, ops=("crop", "flip", "jitter", "gray", "blur", "solarize"), blur_size=23,
                  threshold=0.5):
    """Arbitrary per-sample parameters (not a paper's distribution): crops anywhere, up- and downscaling."""
    g = torch.Generator().manual_seed(seed)
    heights, widths = _sizes(images)
    b = heights.shape[0]
    p = AugmentParams.identity(b, heights, widths)

    def uniform(lo, hi):
        return torch.empty(b).uniform_(lo, hi, generator=g)

    if "crop" in ops:
        ch = (uniform(0.1, 1.0) * heights).long().clamp(min=1)
        cw = (uniform(0.1, 1.0) * widths).long().clamp(min=1)
        top = (uniform(0, 1) * (heights - ch + 1)).long().clamp(max=heights - ch)
        left = (uniform(0, 1) * (widths - cw + 1)).long().clamp(max=widths - cw)
        p.crop = torch.stack([top, left, ch, cw], 1)
    if "flip" in ops:
        p.flip = torch.rand(b, generator=g) < 0.5
    jitter_ops = {"brightness", "contrast", "saturation", "hue"} & set(ops)
    if "jitter" in ops:
        jitter_ops = {"brightness", "contrast", "saturation", "hue"}
    if jitter_ops:
        p.jitter = torch.ones(b, dtype=torch.bool)
        if "jitter" in ops:
            p.jitter[0] = False
        for name in ("brightness", "contrast", "saturation"):
            if name in jitter_ops:
                setattr(p, name, uniform(0.4, 1.8))
        if "hue" in jitter_ops:
            p.hue = uniform(-0.5, 0.5)
        p.jitter_order = torch.stack([torch.randperm(4, generator=g) for _ in range(b)])
    if "gray" in ops:
        p.grayscale = torch.rand(b, generator=g) < 0.5
    if "blur" in ops:
        p.blur_sigma = torch.where(torch.rand(b, generator=g) < 0.7, uniform(0.1, 2.0), torch.zeros(b))
        p.blur_size = torch.full((b,), blur_size, dtype=torch.int64)
    if "solarize" in ops:
        p.solarize = torch.rand(b, generator=g) < 0.5
        p.solarize_threshold = torch.full((b,), threshold)
    return p


def check_backend(backend, images, params, out_size, out_dtype=torch.float32, channels_last=False,
                  mean=MEAN, std=STD):
    """The op contract's rule on the normalised output, and issue 3's 1/255 bound before normalisation."""
    channels = images.channels if isinstance(images, PackedImages) else images.shape[-1]
    mean, std = mean[:channels], std[:channels]
    out = augment(images, params, out_size, mean, std, out_dtype=out_dtype, channels_last=channels_last,
                  backend=backend)
    ref64 = augment_reference(images, params, out_size, mean, std, out_dtype=torch.float64)
    ref_same = augment_reference(images, params, out_size, mean, std, out_dtype=out_dtype,
                                 compute_dtype=torch.float32)
    assert out.shape == ref64.shape and out.dtype == out_dtype
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert_error_within(f"{backend} augment", out, ref64, ref_same, atol=1e-5)
    std_t = torch.tensor(std, dtype=torch.float64).reshape(1, -1, 1, 1)
    pixel_err = ((out.double() - ref64) * std_t).abs().max().item()
    assert pixel_err <= PIXEL_ATOL, f"{backend}: max error {pixel_err:.3g} before normalisation > 1/255"
    return out


# ---------------------------------------------------------------------------------------------------------------
# The reference against independent definitions
# ---------------------------------------------------------------------------------------------------------------


def test_reference_hsv_matches_colorsys():
    x = torch.rand(3, 9, 11, dtype=torch.float64)
    x[:, 0, 0] = 0.5  # a gray pixel: hue and saturation 0
    hsv = _rgb_to_hsv(x)
    expected = torch.tensor([[colorsys.rgb_to_hsv(*x[:, i, j].tolist()) for j in range(11)] for i in range(9)],
                            dtype=torch.float64).permute(2, 0, 1)
    torch.testing.assert_close(hsv, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(_hsv_to_rgb(hsv), x, atol=1e-12, rtol=0)


def test_reference_gaussian_kernel():
    k = gaussian_kernel1d(23, 1.3)
    x = torch.arange(-11, 12, dtype=torch.float64)
    expected = torch.exp(-x**2 / (2 * 1.3**2))
    torch.testing.assert_close(k, expected / expected.sum())


def test_reference_resize_matches_pillow():
    """Downscaling antialias agrees with PIL's bilinear (the filter torchvision's antialias reproduces)."""
    Image = pytest.importorskip("PIL.Image")
    import numpy as np

    images = _images(1, 75, 91, seed=3)
    params = AugmentParams.identity(1, 75, 91)
    params.crop = torch.tensor([[4, 9, 67, 80]])
    ref = augment_reference(images, params, (23, 31), (0.0,) * 3, (1.0,) * 3, out_dtype=torch.float64)
    crop = Image.fromarray(images[0, 4:71, 9:89].numpy())
    pil = torch.from_numpy(np.asarray(crop.resize((31, 23), Image.BILINEAR))).permute(2, 0, 1).double() / 255
    assert (ref[0] - pil).abs().max().item() <= 1.0 / 255  # PIL rounds to uint8


def test_reference_identity_is_a_copy():
    images = _images(2, 13, 7)
    params = AugmentParams.identity(2, 13, 7)
    out = augment_reference(images, params, (13, 7), (0.0,) * 3, (1.0,) * 3, out_dtype=torch.float64)
    torch.testing.assert_close(out, images.permute(0, 3, 1, 2).double() / 255, atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Fused backends against the reference
# ---------------------------------------------------------------------------------------------------------------

PER_OP = [("crop",), ("crop", "flip"), ("brightness",), ("contrast",), ("saturation",), ("hue",),
          ("brightness", "contrast", "saturation", "hue"), ("gray",), ("blur",), ("solarize",)]


@pytest.mark.parametrize("backend", fused_backends(op="augment"))
@pytest.mark.parametrize("ops", PER_OP, ids=["-".join(o) for o in PER_OP])
def test_each_operation(backend, ops):
    images = _images(3, 29, 37, seed=len(ops))
    check_backend(backend, images, random_params(images, seed=7, ops=ops, blur_size=9), (17, 19))


@pytest.mark.parametrize("backend", fused_backends(op="augment"))
@pytest.mark.parametrize("channels", [3, 1])
def test_pipeline_dense(backend, channels):
    images = _images(4, 37, 53, channels=channels, seed=channels)
    check_backend(backend, images, random_params(images, seed=channels, blur_size=7), (17, 17))


@pytest.mark.parametrize("backend", fused_backends(op="augment"))
def test_pipeline_packed_mixed_sizes(backend):
    images = _packed([(1, 1), (37, 53), (20, 9), (2, 40)], seed=5)
    check_backend(backend, images, random_params(images, seed=5, blur_size=5), (17, 23))


@pytest.mark.parametrize("backend", fused_backends(op="augment"))
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_half_outputs_and_channels_last(backend, out_dtype):
    images = _images(3, 24, 30, seed=11)
    check_backend(backend, images, random_params(images, seed=11, blur_size=5), 16, out_dtype=out_dtype,
                  channels_last=True)


@pytest.mark.parametrize("backend", fused_backends(op="augment"))
def test_blur_larger_than_view_reflects(backend):
    """A 23-tap blur on a 5x6 view mirrors more than once (torchvision's pad would refuse)."""
    images = _images(2, 9, 9, seed=2)
    params = random_params(images, seed=2, ops=("blur",), blur_size=23)
    params.blur_sigma = torch.tensor([2.0, 0.7])
    check_backend(backend, images, params, (5, 6))


@pytest.mark.parametrize("backend", fused_backends(op="augment"))
def test_solarize_other_threshold(backend):
    images = _images(2, 16, 16, seed=4)
    params = random_params(images, seed=4, ops=("crop", "solarize"), threshold=0.3)
    check_backend(backend, images, params, 12)


@pytest.mark.parametrize("backend", CPP)
@pytest.mark.parametrize("source,out_size", [((256, 256), 224), ((500, 375), 96), ((37, 53), 224),
                                             ((1, 1), 32)])
def test_cpp_real_sizes(backend, source, out_size):
    """The sizes of the issue (the interpreter is too slow for these; Triton runs them in the GPU tests)."""
    images = _images(2, *source, seed=source[0])
    check_backend(backend, images, random_params(images, seed=source[1]), out_size)


@pytest.mark.gpu
@pytest.mark.parametrize("source,out_size", [((256, 256), 224), ((500, 375), 96), ((37, 53), 17)])
def test_triton_cuda_real_sizes(source, out_size):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    images = _images(8, *source, seed=1).cuda()
    params = random_params(images.cpu(), seed=2).to("cuda")
    out = augment(images, params, out_size, MEAN, STD, backend="triton")
    ref64 = augment_reference(images.cpu(), params.to("cpu"), out_size, MEAN, STD, out_dtype=torch.float64)
    std_t = torch.tensor(STD, dtype=torch.float64).reshape(1, -1, 1, 1)
    assert ((out.cpu().double() - ref64) * std_t).abs().max().item() <= PIXEL_ATOL


@pytest.mark.parametrize("backend", fused_backends(op="augment"))
def test_opcheck(backend):
    """The custom op's schema, fake (meta) implementation and dispatch agree (torch.library.opcheck)."""
    from fastssl.ops.augment import _augment_fused, as_packed

    images = _images(2, 12, 10, seed=9)
    packed = as_packed(images)
    int_params, float_params = random_params(images, seed=9, blur_size=3).packed()
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    for out_dtype, channels_last in ((torch.float32, False), (torch.bfloat16, True)):
        torch.library.opcheck(_augment_fused, (packed.data, packed.offsets, packed.heights, packed.widths, 3,
                                               int_params, float_params, mean, std, 7, 9, out_dtype, channels_last,
                                               backend), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("backend", CPP)
def test_compile_fullgraph_matches_eager(backend, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    images = _images(3, 20, 16, seed=10)
    params = random_params(images, seed=10, blur_size=5)

    def views(x):
        return augment(x, params, 11, MEAN, STD, backend=backend)

    compiled = torch.compile(views, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(images), views(images), atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Bad input names the argument
# ---------------------------------------------------------------------------------------------------------------


def _good():
    images = _images(2, 8, 8)
    return images, AugmentParams.identity(2, 8, 8)


@pytest.mark.parametrize("mutate,match", [
    (lambda i, p: (i.float(), p, {}), "images: expected uint8"),
    (lambda i, p: (i[0], p, {}), "images: expected \\(B, H, W, C\\)"),
    (lambda i, p: (torch.zeros(2, 8, 8, 2, dtype=torch.uint8), p, {}), "images: expected \\(B, H, W, C\\)"),
    (lambda i, p: (i[:0], p, {}), "images: empty batch"),
    (lambda i, p: (i, AugmentParams.identity(3, 8, 8), {}), "params.crop: expected shape \\(2, 4\\)"),
    (lambda i, p: (i, AugmentParams.identity(2, 9, 8), {}), "params.crop: boxes"),
    (lambda i, p: (i, p, {"out_size": 0}), "out_size: must be positive"),
    (lambda i, p: (i, p, {"out_size": (4, -1)}), "out_size: must be positive"),
    (lambda i, p: (i, p, {"std": (0.2, 0.0, 0.2)}), "std: contains 0"),
    (lambda i, p: (i, p, {"mean": (0.5, 0.5)}), "mean: expected 3 values"),
    (lambda i, p: (i, p, {"out_dtype": torch.int32}), "out_dtype"),
])
def test_bad_inputs(mutate, match):
    images, params = _good()
    images, params, kwargs = mutate(images, params)
    args = dict(out_size=4, mean=MEAN, std=STD)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        augment(images, params, **args)


def test_bad_params_values():
    images, params = _good()
    params.jitter_order[1] = torch.tensor([0, 0, 2, 3])
    with pytest.raises(ValueError, match="params.jitter_order"):
        augment(images, params, 4, MEAN, STD)
    images, params = _good()
    params.blur_sigma[0] = 1.0
    params.blur_size[0] = 4
    with pytest.raises(ValueError, match="params.blur_size"):
        augment(images, params, 4, MEAN, STD)


def test_bad_packed_images():
    packed = _packed([(3, 4), (5, 6)])
    packed.offsets = packed.offsets + 10_000
    with pytest.raises(ValueError, match="images: an image runs past the end"):
        augment(packed, AugmentParams.identity(2, torch.tensor([3, 5]), torch.tensor([4, 6])), 4, MEAN, STD)


# ---------------------------------------------------------------------------------------------------------------
# Triton-specific: what the shared cases above do not reach in kernels/augment.py (their views fit in one 32 x 32
# tile). Small batches: the interpreter runs each program in Python.
# ---------------------------------------------------------------------------------------------------------------

TRITON = pytest.param("triton", marks=fused_backends(op="augment")[1].marks)


@pytest.mark.parametrize("backend", [TRITON])
def test_triton_views_span_tiles(backend):
    """70 x 45 views: several resize tiles (the contrast mean adds partial sums across tiles), blur halos that
    cross tile edges, partial tiles at the right and bottom; fp32 channels_last strides."""
    images = _images(2, 90, 61, seed=21)
    check_backend(backend, images, random_params(images, seed=21, blur_size=23), (70, 45), channels_last=True)


@pytest.mark.parametrize("backend", [TRITON])
def test_triton_out_size_one(backend):
    images = _images(2, 9, 9, seed=3)
    check_backend(backend, images, random_params(images, seed=3, blur_size=3), (1, 1))
    check_backend(backend, images, random_params(images, seed=4, blur_size=3), (1, 5))


@pytest.mark.parametrize("backend", [TRITON])
def test_triton_blur_wider_than_a_chunk(backend):
    """41 and 65 taps: the blur's halo spans several K chunks, and mirrors more than once on a 30 x 32 view."""
    images = _images(2, 40, 41, seed=5)
    params = random_params(images, seed=5, ops=("crop", "blur"))
    params.blur_sigma = torch.tensor([1.5, 3.0])
    params.blur_size = torch.tensor([41, 65])
    check_backend(backend, images, params, (30, 32))


@pytest.mark.parametrize("backend", [TRITON])
def test_triton_downscale_many_taps(backend):
    """5x downscaling: ~11 taps per axis, the runtime tap loops past the 2-3 taps of upscaling."""
    images = _images(2, 55, 45, seed=8)
    check_backend(backend, images, random_params(images, seed=8, ops=("flip", "jitter")), (11, 9))


_COMPILE_SM90 = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import fastssl.kernels.augment as K

P, F = "*i64", "*fp32"
images = dict(data_ptr="*u8", offsets_ptr=P, heights_ptr=P, widths_ptr=P, int_ptr=P, float_ptr=F)
# OH, tiles_w and out_sw equal 1: Triton passes ints equal to 1 as constexprs, the others as i32.
sizes = dict(OH="constexpr", OW="i32", tiles_w="constexpr")
strides = dict(out_sb="i32", out_sc="i32", out_sh="i32", out_sw="constexpr")
ones = dict(OH=1, tiles_w=1, C=3)
kernels = [
    (K._contrast_partials_kernel, {**images, "partials_ptr": F, **sizes, "n_tiles": "i32"},
     dict(TILE_H=K.TILE_H, TILE_W=K.TILE_W, WIDE_DATA=True), K.NUM_WARPS),
    (K._augment_kernel, {**images, "mean_ptr": F, "std_ptr": F, "partials_ptr": F, "scratch_ptr": F,
                         "out_ptr": "*bf16", **sizes, "n_tiles": "i32", **strides},
     dict(TILE_H=K.TILE_H, TILE_W=K.TILE_W, PARTIALS_BLOCK=64, WIDE_DATA=False, out_sw=1), K.NUM_WARPS),
    (K._blur_kernel, {"scratch_ptr": F, "int_ptr": P, "float_ptr": F, "mean_ptr": F, "std_ptr": F,
                      "out_ptr": "*fp16", **sizes, **strides},
     dict(BLUR_TILE=K.BLUR_TILE, K_BLOCK=K.BLUR_K_BLOCK, KERNEL_SUM_BLOCK=K.KERNEL_SUM_BLOCK,
          DOT_PRECISION=K.BLUR_DOT_PRECISION, out_sw=1), K.BLUR_NUM_WARPS),
]
for fn, signature, constants, warps in kernels:
    constants = {**ones, **constants}
    signature = {**signature, **{name: "constexpr" for name in constants}}
    triton.compile(ASTSource(fn, signature, constants), target=GPUTarget("cuda", 90, 32),
                   options={"num_warps": warps})
"""


@pytest.mark.parametrize("backend", [TRITON])
def test_triton_compiles_for_sm90(backend):
    """The interpreter skips Triton's compiler, which rejects what it lets through (a module global that is not
    a constexpr; .to() on an int argument that Triton specialised to the constexpr 1). Compiling to an sm_90
    cubin needs no GPU; a subprocess, because under TRITON_INTERPRET=1 the kernels are interpreter objects."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", _COMPILE_SM90], env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-4000:]


@pytest.mark.gpu
@pytest.mark.parametrize("out_dtype,channels_last", [(torch.float32, False), (torch.bfloat16, True)])
@pytest.mark.parametrize("source,out_size", [((256, 256), 224), ((90, 61), (70, 45))])
def test_triton_cuda_contract_tolerance(source, out_size, out_dtype, channels_last):
    """The op contract's rule on the GPU (tf32x3 blur products, the GPU's exp and division), where the real-size
    test above checks only the 1/255 bound."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    images = _images(4, *source, seed=9)
    params = random_params(images, seed=9)
    out = augment(images.cuda(), params.to("cuda"), out_size, MEAN, STD, out_dtype=out_dtype,
                  channels_last=channels_last, backend="triton").cpu()
    ref64 = augment_reference(images, params, out_size, MEAN, STD, out_dtype=torch.float64)
    ref_same = augment_reference(images, params, out_size, MEAN, STD, out_dtype=out_dtype,
                                 compute_dtype=torch.float32)
    assert_error_within("triton augment (CUDA)", out, ref64, ref_same, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# C++ kernel specifics: thread layouts (whole samples, row bands), out strides, determinism, sample independence,
# the resize code paths, the kernel's own checks, non-temporal stores for large outputs
# ---------------------------------------------------------------------------------------------------------------



def _every_op_params(images, seed):
    """random_params with every sample jittered (contrast in the middle of the order) and blurred."""
    p = random_params(images, seed=seed, blur_size=9)
    b = len(p)
    p.jitter = torch.ones(b, dtype=torch.bool)
    p.jitter_order = torch.tensor([2, 1, 3, 0]).repeat(b, 1)
    p.blur_sigma = torch.linspace(0.5, 2.0, b)
    return p


def _with_threads(threads, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def _cpp_kernel():
    from fastssl import _dispatch

    return _dispatch.extension()[0].augment


def _call_kernel(images, params, out):
    packed = images if isinstance(images, PackedImages) else PackedImages.from_list(list(images))
    ints, floats = params.packed()
    c = packed.channels
    _cpp_kernel()(packed.data, packed.offsets, packed.heights, packed.widths, c, ints, floats,
                  torch.tensor(MEAN[:c]), torch.tensor(STD[:c]), out)
    return out


@pytest.mark.parametrize("backend", CPP)
@pytest.mark.parametrize("channels", [3, 1])
def test_cpp_thread_layouts_agree(backend, channels):
    """Row bands (B < threads, and the B mod threads tail) give the bits of whole samples on one thread."""
    images = _images(5, 31, 43, channels=channels, seed=13)
    params = _every_op_params(images, seed=13)

    def run():
        return augment(images, params, (19, 23), MEAN[:channels], STD[:channels], backend=backend)

    expected = _with_threads(1, run)
    for threads in (2, 3, 4):
        assert torch.equal(_with_threads(threads, run), expected), f"{threads} threads"
    one = images[2:3]
    one_params = params.select(slice(2, 3))
    out = _with_threads(4, lambda: check_backend(backend, one, one_params, (19, 23)))
    assert torch.equal(out, expected[2:3])


@pytest.mark.parametrize("backend", CPP)
def test_cpp_deterministic_and_samples_independent(backend):
    images = _images(4, 29, 37, seed=21)
    params = _every_op_params(images, seed=21)
    first = augment(images, params, 17, MEAN, STD, backend=backend)
    assert torch.equal(augment(images, params, 17, MEAN, STD, backend=backend), first)
    others = _images(4, 29, 37, seed=22)
    others[0] = images[0]
    other_params = _every_op_params(others, seed=22)
    for field in other_params.__dataclass_fields__:
        getattr(other_params, field)[0] = getattr(params, field)[0]
    changed = augment(others, other_params, 17, MEAN, STD, backend=backend)
    assert torch.equal(changed[0], first[0])
    assert not torch.equal(changed[1:], first[1:])


@pytest.mark.parametrize("backend", CPP)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cpp_writes_through_any_out_strides(backend, out_dtype):
    images = _images(3, 20, 26, seed=5)
    params = random_params(images, seed=5, blur_size=5)
    b, c, h, w = 3, 3, 11, 13
    expected = _call_kernel(images, params, torch.empty(b, c, h, w, dtype=out_dtype))
    layouts = {
        "channels_last": torch.empty(b, c, h, w, dtype=out_dtype, memory_format=torch.channels_last),
        "w-major": torch.empty(b, c, w, h, dtype=out_dtype).transpose(2, 3),
        "every other column": torch.empty(b, c, h, 2 * w, dtype=out_dtype)[..., ::2],
        "(B, H, C, W)": torch.empty(b, h, c, w, dtype=out_dtype).permute(0, 2, 1, 3),
    }
    for name, out in layouts.items():
        assert torch.equal(_call_kernel(images, params, out), expected), name


@pytest.mark.parametrize("backend", CPP)
@pytest.mark.parametrize("crop,out_size", [
    ((40, 30), (47, 45)),  # upscale both ways: permute window, ring of resampled rows
    ((10, 60), (17, 19)),  # wide crop, 3x downscale across: gathers
    ((60, 12), (17, 13)),  # tall crop: rows filtered first, then the permute window
    ((60, 60), (9, 9)),    # 6.7x downscale: rows first, then gathers
    ((1, 60), (5, 7)),     # one source row stretched
])
def test_cpp_resize_paths(backend, crop, out_size):
    images = _images(2, 64, 64, seed=crop[0])
    params = AugmentParams.identity(2, 64, 64)
    params.crop = torch.tensor([[1, 2, *crop], [3, 4, *crop]])
    params.flip = torch.tensor([False, True])
    check_backend(backend, images, params, out_size)


@pytest.mark.parametrize("backend", CPP)
def test_cpp_kernel_checks_name_the_tensor(backend):
    images = _images(2, 8, 8)
    params = AugmentParams.identity(2, 8, 8)
    packed = PackedImages.from_list(list(images))
    ints, floats = params.packed()
    kernel = _cpp_kernel()
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    args = {"data": packed.data, "offsets": packed.offsets, "heights": packed.heights,
            "widths": packed.widths, "channels": 3, "int_params": ints, "float_params": floats, "mean": mean,
            "std": std, "out": torch.empty(2, 3, 4, 4)}
    taller_crop = ints + torch.tensor([0, 0, 1, 0] + [0] * 9)
    bad = [
        ({"int_params": ints[:, :12]}, "int_params must have shape \\(2, 13\\)"),
        ({"float_params": floats.double()}, "float_params must be Float"),
        ({"out": torch.empty(2, 3, 4, 4, dtype=torch.float64)}, "out must be float32, bfloat16 or float16"),
        ({"out": torch.empty(2, 1, 4, 4)}, "out must have shape \\(2, 3, out_h, out_w\\)"),
        ({"out": torch.empty(2, 3, 1, 4).expand(2, 3, 4, 4)}, "out must not have elements that share memory"),
        ({"std": std[:2]}, "std must have shape \\(3,\\)"),
        ({"int_params": taller_crop}, "crop box .* of sample 0 is not inside"),
    ]
    for change, match in bad:
        call = {**args, **change}
        with pytest.raises(RuntimeError, match=match):
            kernel(*call.values())


@pytest.mark.parametrize("backend", CPP)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cpp_streaming_stores_match(backend, out_dtype, channels_last):
    """Outputs of 8 MiB and more take non-temporal stores; the values are those of a small call."""
    images = _images(40, 32, 32, seed=8)
    params = random_params(images, seed=8, blur_size=7)
    big = augment(images, params, 224, MEAN, STD, out_dtype=out_dtype, channels_last=channels_last,
                  backend=backend)
    assert big.numel() * big.element_size() >= 8 << 20
    small = augment(images[:3], params.select(slice(0, 3)), 224, MEAN, STD, out_dtype=out_dtype,
                    channels_last=channels_last, backend=backend)
    assert torch.equal(big[:3], small)


@pytest.mark.gpu
@pytest.mark.parametrize("packed", [False, True])
def test_cuda_pipeline_never_makes_the_host_wait(packed):
    """The training path (CPU parameters, pinned uint8 batch copied without blocking, views on the GPU) makes no
    synchronising CUDA call: a host wait per step would drain the GPU's queue and expose the launch latency."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from fastssl.data import view_pipeline

    pipeline = view_pipeline("simclr")
    if packed:
        images = PackedImages.from_list([_images(1, h, w, seed=h)[0] for h, w in ((64, 48), (37, 90), (80, 80))],
                                        pin_memory=True)
    else:
        images = _images(6, 64, 48, seed=3).pin_memory()
    params = pipeline.sample_params(images, torch.Generator().manual_seed(0))
    views = run_without_host_sync(
        lambda: pipeline(images.to("cuda", non_blocking=True), params=params, backend="triton"))
    expected = pipeline(images, params=params, backend="reference")
    for got, ref in zip(views, expected):
        assert (got.float().cpu() - ref.float()).abs().max().item() < 0.05
