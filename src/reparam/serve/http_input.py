"""What ``POST /predict`` accepts, checked in the HTTP process before anything reaches the model.

An ASGI middleware (:class:`InputGate`) in front of LitServe's endpoint: the API key, the body size, the content type,
the request's images (raw ``image/*`` body, multipart upload, JSON ``{"image": b64}`` / ``{"images": [...]}``), each
image's declared width x height against ``max_pixels`` (read from its header, before decoding: decompression
bombs), then the decode and the recorded preprocessing. A bad request gets a 4xx JSON ``{"detail": "<one line>"}``
here and never reaches the inference worker; LitServe's batching would otherwise fail every request batched with it.
Good requests go on as JSON holding the images at the model's input size, still uint8 (:func:`pack` /
:func:`unpack`): the recorded rule's resize and crop run here, its normalization runs in the worker on the whole
batch at once (:class:`~reparam.serve.model.Classifier`), where it costs a twentieth per image of a call per image.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import io
import json
import logging
import re
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..preprocess import Preprocessing, decode_image_bytes

__all__ = [
    "InputLimits",
    "BadInput",
    "InputGate",
    "images_of",
    "declared_size",
    "max_pixels_problem",
    "pillow_pixel_limit",
    "model_sized_image",
    "model_input",
    "pack",
    "unpack",
    "API_KEY_HEADER",
]

API_KEY_HEADER = "x-api-key"
IMAGE_TYPES_HINT = (
    "send an image body (Content-Type image/png, image/jpeg, ...), a multipart form with image files, "
    'or JSON {"image": "<base64>"} / {"images": [...]}'
)
THREAD_DECODE_BYTES = 256 * 1024  # larger images are decoded off the event loop


@dataclass(frozen=True)
class InputLimits:
    max_bytes: int  # request body
    max_pixels: int  # width x height of each image, as declared in its header
    max_images: int  # images in one request


class BadInput(Exception):
    """A request the server refuses: an HTTP status and one line saying what was wrong."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


# -- the request's images -------------------------------------------------------------------------------------
def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise BadInput(400, f"{where} must be a base64 string, got {type(value).__name__}")
    if value.startswith("data:") and "," in value:  # a data URL, as browsers make them
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(400, f"{where} is not valid base64") from None


def _json_images(body: bytes, max_images: int) -> list[bytes]:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadInput(400, f"malformed JSON ({err}); {IMAGE_TYPES_HINT}") from None
    if not isinstance(data, dict) or ("image" not in data and "images" not in data):
        raise BadInput(400, 'JSON body must be an object with "image": <base64> or "images": [<base64>, ...]')
    if "images" in data:
        if not isinstance(data["images"], list):
            raise BadInput(400, '"images" must be a list of base64 strings')
        _check_count(len(data["images"]), max_images)
        return [_b64(v, f"images[{i}]") for i, v in enumerate(data["images"])]
    return [_b64(data["image"], '"image"')]


def _check_count(count: int, max_images: int) -> None:
    if count == 0:
        raise BadInput(400, f"the request holds no image; {IMAGE_TYPES_HINT}")
    if count > max_images:
        raise BadInput(413, f"{count} images in one request, more than serve.max_images={max_images}; split it")


def images_of(content_type: str, body: bytes, max_images: int) -> list[bytes]:
    """The encoded images of a raw or JSON request (multipart is parsed by :class:`InputGate`)."""
    kind = content_type.split(";")[0].strip().lower()
    if not body:
        raise BadInput(400, f"empty request body; {IMAGE_TYPES_HINT}")
    if kind.startswith("image/") or kind == "application/octet-stream":
        return [body]
    if kind == "application/json":
        images = _json_images(body, max_images)
        _check_count(len(images), max_images)
        return images
    shown = kind or "none"
    raise BadInput(415, f"unsupported Content-Type '{shown}'; {IMAGE_TYPES_HINT}")


# -- one image -------------------------------------------------------------------------------------------------
def pillow_pixel_limit() -> int | None:
    """The most pixels Pillow opens at all: above it ``Image.open`` refuses an image as a decompression bomb, whatever
    ``max_pixels`` says (``2 * PIL.Image.MAX_IMAGE_PIXELS``; None when that is switched off)."""
    from PIL import Image

    return None if Image.MAX_IMAGE_PIXELS is None else 2 * int(Image.MAX_IMAGE_PIXELS)


def max_pixels_problem(max_pixels: int, setting: str) -> str | None:
    """What is wrong with a ``max_pixels`` setting, if anything: below 1, or above what Pillow opens at all."""
    limit = pillow_pixel_limit()
    if max_pixels < 1:
        return f"{setting}={max_pixels} must be at least 1"
    if limit is not None and max_pixels > limit:
        return (
            f"{setting}={max_pixels:,} is above the {limit:,} pixels Pillow opens at all (it refuses larger images as "
            f"decompression bombs); use {setting}={limit} or less"
        )
    return None


def declared_size(data: bytes, max_pixels: int, setting: str = "serve.max_pixels") -> tuple[int, int]:
    """(width, height) from the image's header, without decoding its pixels; 413 when they exceed ``max_pixels``
    (the setting named ``setting``, at most :func:`pillow_pixel_limit`)."""
    from PIL import Image, UnidentifiedImageError

    over = f"more than {setting}={max_pixels:,}; send a smaller image"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning: this function is the check
        try:
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
        except UnidentifiedImageError:
            raise BadInput(400, "not an image (no known image format)") from None
        except Image.DecompressionBombError as err:  # beyond Pillow's own limit, which max_pixels never exceeds
            # Pillow says the count in its message ("Image size (400000000 pixels) exceeds ..."); else the limit
            count = re.search(r"\((\d+) pixels\)", str(err))
            declared = f"{int(count.group(1)):,}" if count else f"more than {pillow_pixel_limit():,}"
            raise BadInput(413, f"image declares {declared} pixels, {over}") from None
        except Exception as err:  # noqa: BLE001 - a crafted header may raise anything; it is the client's input
            raise BadInput(
                400, f"unreadable image header ({' '.join(str(err).split()) or type(err).__name__})"
            ) from None
    if width * height > max_pixels:
        raise BadInput(413, f"image is {width}x{height} = {width * height:,} pixels, {over}")
    return width, height


def model_sized_image(
    data: bytes,
    preprocessing: Preprocessing,
    max_pixels: int,
    geometry: Callable | None = None,
    setting: str = "serve.max_pixels",
) -> torch.Tensor:
    """Encoded bytes -> uint8 ``(C, H, W)`` at the model's input size: the declared size checked first (against
    ``max_pixels``, the setting named ``setting``), then decoded and resized/cropped by the recorded rule
    (``geometry``: ``preprocessing.geometry()``, built once by callers in a loop). ``preprocessing.normalize()``
    finishes the rule (on a batch)."""
    declared_size(data, max_pixels, setting)
    try:
        image = decode_image_bytes(data)
    except ValueError as err:
        raise BadInput(400, str(err)) from None
    except Exception as err:  # noqa: BLE001 - a decoder failing on crafted input is the input's fault
        raise BadInput(400, f"unreadable image ({type(err).__name__}: {' '.join(str(err).split())})") from None
    if tuple(image.shape[-2:]) == tuple(preprocessing.size):
        return image  # the rule's resize and crop are no-ops at the input size
    return (geometry or preprocessing.geometry())(image)


def model_input(data: bytes, preprocessing: Preprocessing, max_pixels: int) -> torch.Tensor:
    """Encoded bytes -> the model's float32 input ``(C, H, W)`` by the whole recorded rule."""
    return preprocessing.normalize()(model_sized_image(data, preprocessing, max_pixels))


def _single_threaded(data: bytes, preprocessing: Preprocessing, max_pixels: int, geometry: Callable) -> torch.Tensor:
    torch.set_num_threads(1)  # OpenMP's thread count is per thread: set it in this one too
    return model_sized_image(data, preprocessing, max_pixels, geometry)


# -- what the inference worker receives ----------------------------------------------------------------------------
def pack(batch: torch.Tensor) -> bytes:
    """A uint8 batch as the JSON LitServe's endpoint reads."""
    array = batch.contiguous().numpy().astype(np.uint8, copy=False)
    return json.dumps({"shape": list(array.shape), "pixels": base64.b64encode(array.tobytes()).decode()}).encode()


def unpack(payload: dict) -> torch.Tensor:
    array = np.frombuffer(base64.b64decode(payload["pixels"]), dtype=np.uint8).reshape(payload["shape"])
    return torch.from_numpy(array.copy())


# -- the middleware --------------------------------------------------------------------------------------------------
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


async def send_error(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class InputGate:
    """ASGI middleware: the API key on every route but the page, and the whole input check on ``POST <path>``."""

    def __init__(
        self,
        app: Callable,
        *,
        limits: InputLimits,
        preprocessing: dict,
        api_key: str | None = None,
        path: str = "/predict",
        public_paths: tuple[str, ...] = ("/",),
    ) -> None:
        # runs in the HTTP process (Starlette builds middleware on its first request): decoding there is
        # single-threaded, so torch's pool never meets a fork
        torch.set_num_threads(1)
        # python-multipart logs a warning for each malformed body before it raises; the 400 answer says it already
        logging.getLogger("python_multipart").setLevel(logging.ERROR)
        self.app, self.limits, self.api_key = app, limits, api_key
        self.preprocessing = Preprocessing.from_record(preprocessing)
        self.geometry = self.preprocessing.geometry()
        self.path, self.public_paths = path, public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.api_key and scope["path"] not in self.public_paths:
            given = _header(scope, API_KEY_HEADER.encode())
            if given is None:
                return await send_error(send, 401, "missing API key: send it in the X-API-Key header")
            if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                return await send_error(send, 401, "wrong API key (X-API-Key header)")
        if scope["path"] != self.path or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        try:
            body = await self._body(scope, receive)
            images = await self._images(scope, body)
            batch = torch.stack([await self._model_input(i, data, len(images)) for i, data in enumerate(images)])
        except BadInput as err:
            return await send_error(send, err.status, err.detail)
        payload = pack(batch)
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": payload, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        await self.app({**scope, "headers": headers}, replay, send)

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.limits.max_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BadInput(413, f"request body is {int(declared):,} bytes, more than serve.max_bytes={limit:,}")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadInput(400, "the client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BadInput(413, f"request body is over serve.max_bytes={limit:,} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _images(self, scope: Scope, body: bytes) -> list[bytes]:
        content_type = _header(scope, b"content-type") or ""
        if content_type.split(";")[0].strip().lower() != "multipart/form-data":
            return images_of(content_type, body, self.limits.max_images)
        if not body:
            raise BadInput(400, f"empty request body; {IMAGE_TYPES_HINT}")
        return await self._multipart(scope, body)

    async def _multipart(self, scope: Scope, body: bytes) -> list[bytes]:
        from starlette.datastructures import UploadFile
        from starlette.requests import Request

        async def once() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(scope, once).form(
                max_files=self.limits.max_images + 1, max_fields=self.limits.max_images + 16
            )
            files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            _check_count(len(files), self.limits.max_images)
            return [await f.read() for f in files]
        except BadInput:
            raise
        except Exception as err:  # noqa: BLE001 - python-multipart's errors on a malformed body
            detail = getattr(err, "detail", None) or " ".join(str(err).split()) or type(err).__name__
            if "Too many files" in str(detail):
                raise BadInput(
                    413, f"more images in one request than serve.max_images={self.limits.max_images}; split it"
                ) from None
            raise BadInput(400, f"malformed multipart body ({detail})") from None

    async def _model_input(self, index: int, data: bytes, count: int) -> torch.Tensor:
        try:
            if len(data) > THREAD_DECODE_BYTES:
                return await asyncio.to_thread(
                    _single_threaded, data, self.preprocessing, self.limits.max_pixels, self.geometry
                )
            return model_sized_image(data, self.preprocessing, self.limits.max_pixels, self.geometry)
        except BadInput as err:
            if count > 1:
                raise BadInput(err.status, f"image {index}: {err.detail}") from None
            raise
