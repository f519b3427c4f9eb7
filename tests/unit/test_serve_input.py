"""The server's input checks and target choice, without a server: every bad input is a BadInput with a 4xx and one
line; the declared size is refused before decoding; the choice reads deploy's report and index."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from reparam.deploy.report_index import find_reports, record_report, run_dir_of, weights_sha256
from reparam.errors import UserError
from reparam.preprocess import Preprocessing
from reparam.serve.choice import choose_target
from reparam.serve.http_input import (
    BadInput,
    declared_size,
    images_of,
    max_pixels_problem,
    model_input,
    model_sized_image,
    pack,
    pillow_pixel_limit,
    unpack,
)

PRE = Preprocessing(size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), classes=tuple("abcdefghij"))


def png(width: int = 32, height: int = 32, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), (128,) * len(mode) if mode in ("RGB", "RGBA") else 128).save(out, "PNG")
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height (IHDR) but holds almost no pixel data: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def status_of(fn, *args) -> tuple[int, str]:
    with pytest.raises(BadInput) as info:
        fn(*args)
    assert "\n" not in info.value.detail and info.value.detail
    return info.value.status, info.value.detail


def test_each_body_form_gives_its_images() -> None:
    image = png()
    assert images_of("image/png", image, 4) == [image]
    assert images_of("application/octet-stream", image, 4) == [image]
    b64 = base64.b64encode(image).decode()
    assert images_of("application/json", json.dumps({"image": b64}).encode(), 4) == [image]
    assert images_of(
        "application/json; charset=utf-8", json.dumps({"images": [b64, f"data:image/png;base64,{b64}"]}).encode(), 4
    ) == [image, image]


@pytest.mark.parametrize(
    "content_type, body, status, fragment",
    [
        ("image/png", b"", 400, "empty request body"),
        ("text/plain", b"hello", 415, "unsupported Content-Type 'text/plain'"),
        ("", b"hello", 415, "unsupported Content-Type 'none'"),
        ("application/json", b"{not json", 400, "malformed JSON"),
        ("application/json", b"[1, 2]", 400, "must be an object"),
        ("application/json", b'{"image": "***not base64***"}', 400, "not valid base64"),
        ("application/json", b'{"image": 12}', 400, "must be a base64 string"),
        ("application/json", b'{"images": []}', 400, "holds no image"),
        ("application/json", json.dumps({"images": ["aGk="] * 5}).encode(), 413, "more than serve.max_images=4"),
    ],
)
def test_bad_bodies_are_4xx_with_one_line(content_type: str, body: bytes, status: int, fragment: str) -> None:
    got, detail = status_of(images_of, content_type, body, 4)
    assert got == status and fragment in detail


def test_declared_size_is_checked_before_decoding() -> None:
    bomb = png_header_only(12_000, 12_000)  # 144 M pixels declared, 80 bytes sent
    assert declared_size(bomb, 12_000**2) == (12_000, 12_000)
    status, detail = status_of(model_input, bomb, PRE, 25_000_000)
    assert status == 413 and detail == (
        "image is 12000x12000 = 144,000,000 pixels, more than serve.max_pixels=25,000,000; send a smaller image"
    )
    # beyond what Pillow opens at all (it raises before the size is returned; its message holds the count)
    status, detail = status_of(model_input, png_header_only(20_000, 20_000), PRE, 25_000_000)
    assert status == 413 and detail == (
        "image declares 400,000,000 pixels, more than serve.max_pixels=25,000,000; send a smaller image"
    )
    assert status_of(model_input, png(64, 64), PRE, 64 * 64 - 1)[0] == 413


def test_max_pixels_above_what_pillow_opens_is_refused_with_the_largest_that_works() -> None:
    limit = pillow_pixel_limit()
    assert limit is not None and max_pixels_problem(limit, "serve.max_pixels") is None
    problem = max_pixels_problem(500_000_000, "serve.max_pixels")
    assert problem is not None and problem.endswith(f"use serve.max_pixels={limit} or less")
    assert max_pixels_problem(0, "prediction.max_pixels") == "prediction.max_pixels=0 must be at least 1"


def test_not_an_image_and_truncated_image_are_400() -> None:
    assert status_of(model_input, b"GIF89a this is not really a gif", PRE, 10**7)[0] == 400
    status, detail = status_of(model_input, b"hello world, no image here", PRE, 10**7)
    assert status == 400 and "not an image" in detail
    full = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(full, "JPEG")
    status, detail = status_of(model_input, full.getvalue()[: len(full.getvalue()) // 2], PRE, 10**7)
    assert status == 400 and "unreadable image" in detail


def test_any_mode_and_size_becomes_the_model_input_of_the_recorded_rule() -> None:
    for mode in ("L", "RGBA", "P", "RGB"):
        x = model_input(png(50, 40, mode), PRE, 10**7)
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    same = model_input(png(32, 32), PRE, 10**7)
    assert torch.allclose(same, torch.full((3, 32, 32), (128 / 255 - 0.5) / 0.25), atol=1e-6)


def test_pack_round_trips_exactly() -> None:
    batch = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(unpack(json.loads(pack(batch))), batch)


def test_resize_here_and_normalize_per_batch_are_the_whole_recorded_rule() -> None:
    wide = Preprocessing(size=(24, 24), mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4), crop_pct=0.875)
    out = io.BytesIO()
    Image.effect_noise((50, 40), 60).convert("RGB").save(out, "PNG")
    sized = model_sized_image(out.getvalue(), wide, 10**7)
    assert sized.dtype == torch.uint8 and sized.shape == (3, 24, 24)
    from reparam.preprocess import decode_image_bytes

    whole = wide(decode_image_bytes(out.getvalue()))
    assert torch.equal(wide.normalize()(sized[None])[0], whole)


# -- the choice of target ---------------------------------------------------------------------------------------
def _report(path: Path, checkpoint: Path, device: str = "cpu", **targets: dict) -> Path:
    entries = {
        name: {
            "label": name,
            "accuracy": 0.9,
            "correct": 9,
            "num_images": 10,
            "details": {},
            "gate": {"passed": passed},
            "throughput": throughput,
            "artifact": None,
        }
        for name, (passed, throughput) in targets.items()
    }
    path.write_text(json.dumps({"checkpoint": str(checkpoint), "device": device, "targets": entries, "exports": {}}))
    return path


def test_the_fastest_passing_target_of_the_newest_report_is_chosen(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(b"x")
    assert run_dir_of(ckpt) == run
    assert choose_target(ckpt, "h", "cpu").name == "fused"  # no report: the reference
    with pytest.raises(UserError, match="cannot run here"):  # with no report either
        choose_target(ckpt, "h", "cpu", target="fused_fp16")
    with pytest.raises(UserError, match=r"^prediction\.target=fused_fp16 cannot run here"):  # the option named
        choose_target(ckpt, "h", "cpu", target="fused_fp16", options="prediction")
    old = _report(
        tmp_path / "old.json", ckpt, plain_vgg=(True, {"1": 10.0, "32": 999.0}), fused=(True, {"1": 5.0, "32": 50.0})
    )
    record_report(old, ckpt, "h", "cpu")
    new = _report(
        tmp_path / "new.json",
        ckpt,
        train_form=(True, {"32": 10**6}),
        fused_bf16=(False, {"32": 10**5}),
        plain_vgg=(True, {"1": 10.0, "32": 40.0}),
        fused=(True, {"1": 5.0, "32": 50.0}),
    )
    record_report(new, ckpt, "h", "cpu")
    record_report(_report(tmp_path / "gpu.json", ckpt, "cuda", fused=(True, {"32": 10**7})), ckpt, "h", "cuda")
    assert [Path(e.report).name for e in find_reports(ckpt, "h", "cpu")] == ["new.json", "old.json"]
    chosen = choose_target(ckpt, "h", "cpu", max_batch_size=32)
    assert chosen.name == "fused" and chosen.report == str(new.resolve())  # never the train form, never a failed gate
    # the count matches what the user can serve, and the report's train_form row is said to be left out
    assert "fastest of the 2 servable targets that passed their check (train_form is not served), at batch 32" in (
        chosen.chosen_because
    )
    assert choose_target(ckpt, "h", "cpu", max_batch_size=8).name == "plain_vgg"  # batch 1 measured: 10 > 5
    from_old = choose_target(ckpt, "h", "cpu", report=old, max_batch_size=32)
    assert from_old.name == "plain_vgg"
    assert "the 2 servable targets that passed their check, at batch" in from_old.chosen_because  # nothing left out
    assert choose_target(ckpt, "h", "cuda", max_batch_size=32).report == str((tmp_path / "gpu.json").resolve())
    for kwargs, fragment in [
        ({"target": "fused_bf16"}, "failed its check"),
        ({"target": "train_form"}, "multi-branch"),
        ({"target": "compiled"}, "was not checked"),
        ({"target": "nope"}, "unknown target"),
        # not advice to deploy it on a CPU, where deploy would refuse it
        ({"target": "fused_fp16"}, "serve.target=fused_fp16 cannot run here: fused_fp16 runs on GPUs only"),
    ]:
        with pytest.raises(UserError, match=fragment):
            choose_target(ckpt, "h", "cpu", **kwargs)
    other = _report(tmp_path / "other.json", tmp_path / "elsewhere.ckpt", fused=(True, {}))
    with pytest.raises(UserError, match="was made from"):
        choose_target(ckpt, "h", "cpu", report=other)
    # a newer deploy of other targets does not hide the newest report that checked the one named (it was refused
    # as "not checked in <newest report>", with no word of the older report that had checked it)
    newest = _report(tmp_path / "newest.json", ckpt, fused=(True, {"32": 50.0}), mine=(True, {"32": 10.0**6}))
    record_report(newest, ckpt, "h", "cpu")
    named = choose_target(ckpt, "h", "cpu", target="plain_vgg", max_batch_size=32)
    assert named.name == "plain_vgg" and named.report == str(new.resolve())
    assert "the newest deploy report of these weights on cpu that checked it" in named.chosen_because
    default = choose_target(ckpt, "h", "cpu", max_batch_size=32)
    assert default.report == str(newest.resolve()) and default.name == "fused"
    # a target of the user's own that this process did not import (imports=[...]) is said, not dropped silently
    assert "left out: mine (no such target here: imports=[<the module that registers it>])" in default.chosen_because
    with pytest.raises(UserError, match=r"was not checked in .*newest\.json"):
        choose_target(ckpt, "h", "cpu", target="compiled")
    # a deploy without a benchmark (benchmark.enabled=false) does not hide the newest one that measured speeds
    untimed = _report(tmp_path / "untimed.json", ckpt, fused=(True, {}), plain_vgg=(True, {}))
    record_report(untimed, ckpt, "h", "cpu")
    kept = choose_target(ckpt, "h", "cpu", max_batch_size=32)
    assert kept.report == str(newest.resolve()) and kept.name == "fused"
    assert f"with a benchmark, {newest.resolve()} (the newer {untimed.resolve()} timed nothing)" in kept.chosen_because


def test_a_target_that_changes_answers_is_not_the_default_but_can_be_named(tmp_path: Path) -> None:
    """INT8 that changed 2 of 36 answers (one right, one wrong) drops 0 points and passes its gate; chosen by default
    as the fastest, it answered a new user's photos worse than fp32. The default asks for 99% of the answers."""
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    report = _report(
        tmp_path / "r.json",
        ckpt,
        onnxruntime_int8=(True, {"32": 900.0}),
        onnxruntime_fp32=(True, {"32": 500.0}),
        fused=(True, {"32": 100.0}),
    )
    data = json.loads(report.read_text())
    (tmp_path / "model.onnx").write_bytes(b"onnx")  # the file an ONNX Runtime target runs must exist
    for name, changed in (("onnxruntime_int8", 2), ("onnxruntime_fp32", 0), ("fused", None)):
        data["targets"][name].update(num_images=36, disagreements=changed)
        data["targets"][name]["artifact"] = None if name == "fused" else str(tmp_path / "model.onnx")
    report.write_text(json.dumps(data))
    record_report(report, ckpt, "h", "cpu")
    chosen = choose_target(ckpt, "h", "cpu", max_batch_size=32, options="prediction")
    assert chosen.name == "onnxruntime_fp32"
    assert chosen.chosen_because.endswith(
        "left out: onnxruntime_int8 changed 2 of 36 test answers (94.4% agree; prediction.min_agreement=0.99, "
        "or prediction.target=onnxruntime_int8 to serve it)"
    )
    assert choose_target(ckpt, "h", "cpu", max_batch_size=32, min_agreement=0.9).name == "onnxruntime_int8"
    assert choose_target(ckpt, "h", "cpu", target="onnxruntime_int8").name == "onnxruntime_int8"  # named: served


@pytest.mark.parametrize("value", [1.5, -0.1, "most", None])
def test_min_agreement_out_of_range_is_one_line(value) -> None:
    from reparam.serve.choice import agreement_share

    assert agreement_share("0.95", "serve.min_agreement") == 0.95
    with pytest.raises(UserError, match=rf"^serve\.min_agreement={value} must be a share of the test images from 0"):
        agreement_share(value, "serve.min_agreement")


def test_weights_hash_depends_on_every_weight() -> None:
    model = torch.nn.Conv2d(3, 4, 3)
    before = weights_sha256(model)
    assert weights_sha256(model) == before
    with torch.no_grad():
        model.bias[0] += 1e-7
    assert weights_sha256(model) != before
