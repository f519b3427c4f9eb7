"""Load test of serve.py: throughput and latency percentiles at several concurrencies (as Triton's perf_analyzer
reports them), beside the same target's offline throughput and a plain FastAPI endpoint without batching.

    python benchmarks/serve_load.py --ckpt <run> [--target NAME] [--concurrency 1 8 32 128] [--duration 10]
                                    [--max-batch-size 32] [--out logs/benchmarks/serve_load.json]

Starts ``serve.py ckpt=<run>`` (LitServe, dynamic batching) and a plain FastAPI endpoint (this file, ``plain``: the
same target, the same preprocessing, one image per request, what users write by hand), both on 127.0.0.1. An async
aiohttp client sends real test-split PNGs (the embedded digits) from N concurrent connections for a fixed time per
level, alternating the two servers level by level so drifting load hits both. The client runs on the same machine
and takes CPU from the servers: say so next to the numbers. Also measured in this process: the target at
``max_batch_size`` with no HTTP (the limit), and where one request's time goes (decode + preprocess, model at batch
1 and per image at max_batch_size).
"""

import argparse
import asyncio
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def served_classifier(ckpt: str, target: str | None, max_batch_size: int, threads: int):
    """The target serve.py would serve for ``ckpt`` (or ``target``), its preprocessing and its choice."""
    from reparam.deploy.load import load_for_deploy
    from reparam.deploy.report_index import weights_sha256
    from reparam.serve.choice import choose_target
    from reparam.serve.model import Classifier, build_target, recorded_preprocessing, with_class_names

    loaded = load_for_deploy(ckpt)
    preprocessing = with_class_names(recorded_preprocessing(loaded), loaded)
    served = choose_target(
        loaded.source,
        weights_sha256(loaded.fused),
        "cpu",
        target=target,
        max_batch_size=max_batch_size,
        recorded_accuracy=loaded.recorded.get("test_acc"),
    )
    return Classifier(build_target(served, loaded, "cpu", threads), preprocessing), preprocessing, served


def plain_server(args: argparse.Namespace) -> None:
    """One image per request, no batching: FastAPI + uvicorn calling the target in the request handler."""
    import torch
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from reparam.serve.http_input import BadInput, model_sized_image

    torch.set_num_threads(args.threads)
    classifier, preprocessing, served = served_classifier(args.ckpt, args.target, 1, args.threads)
    geometry = preprocessing.geometry()
    app = FastAPI()

    @app.get("/health")
    async def health() -> str:
        return "ok"

    @app.post("/predict")
    async def predict(request: Request):
        try:
            x = model_sized_image(await request.body(), preprocessing, 25_000_000, geometry)
        except BadInput as err:
            return JSONResponse({"detail": err.detail}, err.status)
        return {"predictions": [p.to_dict() for p in classifier(x[None])], "target": served.name}

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(argv: list[str], port: int, log: Path) -> subprocess.Popen:
    import urllib.request

    process = subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=log.parent)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{argv[1]} exited {process.returncode}:\n{log.read_text()}")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).status == 200:
                return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit(f"{argv[1]} not ready in 600 s:\n{log.read_text()}")


async def load(url: str, images: list[bytes], concurrency: int, duration: float, warmup: float = 1.0) -> dict:
    """N connections posting images back to back for ``warmup + duration`` seconds; the requests that finish inside
    the window (after the warm-up) count, with their latencies, however long they waited."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    statuses: dict[int, int] = {}
    start = time.perf_counter() + warmup
    stop = start + duration

    async def client(worker: int, session: aiohttp.ClientSession) -> None:
        nonlocal errors
        i = worker
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                async with session.post(
                    url, data=images[i % len(images)], headers={"Content-Type": "image/png"}
                ) as response:
                    await response.read()
                    status = response.status
            except aiohttp.ClientError:
                status = -1
            t1 = time.perf_counter()
            i += concurrency
            if start <= t1 <= stop:
                latencies.append(t1 - t0)
                statuses[status] = statuses.get(status, 0) + 1
                errors += status != 200

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(client(w, session) for w in range(concurrency)))
    ms = sorted(v * 1e3 for v in latencies) or [float("nan")]
    pct = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]  # noqa: E731
    answered = statuses.get(200, 0)
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "images_per_s": answered / duration,
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "errors": errors,
        "statuses": statuses,
    }


def breakdown(classifier, preprocessing, images: list[bytes], max_batch_size: int) -> dict:
    """Per image, no HTTP: decode + preprocess, the model at batch 1, and per image at max_batch_size."""
    import torch

    from reparam.serve.http_input import model_sized_image

    def median_s(fn, repeat: int) -> float:
        fn()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    decode = median_s(lambda: [model_sized_image(b, preprocessing, 25_000_000) for b in images[:64]], 5) / 64
    batch = torch.stack([model_sized_image(b, preprocessing, 25_000_000) for b in images[:max_batch_size]])
    one = median_s(lambda: classifier.probabilities(batch[:1]), 50)
    full = median_s(lambda: classifier.probabilities(batch), 20)
    return {
        "decode_ms": decode * 1e3,
        "model_batch1_ms": one * 1e3,
        "model_per_image_at_max_batch_ms": full * 1e3 / len(batch),
        "offline_images_per_s": len(batch) / full,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "plain":
        p = argparse.ArgumentParser()
        p.add_argument("plain")
        p.add_argument("--ckpt", required=True)
        p.add_argument("--target")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--threads", type=int, default=1)
        return plain_server(p.parse_args())

    class Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
        pass

    p = argparse.ArgumentParser(description=__doc__, formatter_class=Help)
    p.add_argument("--ckpt", required=True, help="a run directory (deployed: its report picks the target)")
    p.add_argument("--target", help="serve.target; default: the fastest checked one")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per level and server")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-timeout", type=float, default=0.005)
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--out", type=Path, default=Path("logs/benchmarks/serve_load.json"), help="the results (JSON)")
    args = p.parse_args()
    args.ckpt = str(Path(args.ckpt).resolve())  # the servers start in a folder of their own

    # the servers' run folders and logs: removed at the end (a server that fails to start prints its log)
    work = Path(tempfile.mkdtemp(prefix="serve_load-"))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    import torch
    from PIL import Image

    from reparam.data.sources import load_source

    torch.set_num_threads(args.threads)
    images = []
    for array in load_source("digits", ".").test_images:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, "PNG")
        images.append(buffer.getvalue())
    served_port, plain_port = _free_port(), _free_port()
    target = [f"serve.target={args.target}"] if args.target else []
    served = _start(
        [
            sys.executable,
            str(ROOT / "serve.py"),
            f"ckpt={args.ckpt}",
            f"serve.port={served_port}",
            f"serve.max_batch_size={args.max_batch_size}",
            f"serve.batch_timeout={args.batch_timeout}",
            f"serve.threads={args.threads}",
            f"hydra.run.dir={work / 'served'}",
            *target,
        ],
        served_port,
        work / "served.log",
    )
    info = json.loads(__import__("urllib.request").request.urlopen(f"http://127.0.0.1:{served_port}/info").read())
    name = info["model"]["target"]["name"]
    plain = _start(
        [
            sys.executable,
            __file__,
            "plain",
            "--ckpt",
            args.ckpt,
            "--target",
            name,
            "--port",
            str(plain_port),
            "--threads",
            str(args.threads),
        ],
        plain_port,
        work / "plain.log",
    )
    try:
        classifier, preprocessing, _ = served_classifier(args.ckpt, name, args.max_batch_size, args.threads)
        before = breakdown(classifier, preprocessing, images, args.max_batch_size)
        rows = []
        for c in args.concurrency:
            for label, port in (("litserve", served_port), ("plain_fastapi", plain_port)):
                row = asyncio.run(load(f"http://127.0.0.1:{port}/predict", images, c, args.duration))
                rows.append({"server": label, **row})
                print(
                    f"{label:14s} c={c:4d} {row['images_per_s']:8.1f} img/s p50 {row['p50_ms']:7.1f} ms "
                    f"p95 {row['p95_ms']:7.1f} p99 {row['p99_ms']:7.1f} errors {row['errors']}",
                    flush=True,
                )
        after = breakdown(classifier, preprocessing, images, args.max_batch_size)
    finally:
        for process in (served, plain):
            process.terminate()
            process.wait(60)
    deploy_offline = info["model"]["target"]["throughput"].get(str(args.max_batch_size))
    result = {
        "target": info["model"]["target"],
        "max_batch_size": args.max_batch_size,
        "batch_timeout": args.batch_timeout,
        "threads": args.threads,
        "duration_s": args.duration,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "deploy_offline_images_per_s": deploy_offline,
        "breakdown_before": before,
        "breakdown_after": after,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\ntarget {name} ({info['model']['target']['label']}), max_batch_size {args.max_batch_size}, "
        f"{args.threads} model thread(s), {os.cpu_count()} CPUs shared with the load generator"
    )
    offline = [before["offline_images_per_s"], after["offline_images_per_s"]]
    recorded = f"{deploy_offline:.0f} in the deploy report" if deploy_offline else "none in the deploy report"
    print(
        f"offline at batch {args.max_batch_size}: {offline[0]:.0f} images/s here before the load, {offline[1]:.0f} "
        "after; "
        f"{recorded}"
    )
    print(
        f"per image: decode (+ resize if needed) {before['decode_ms']:.3f} ms, model at batch 1 "
        f"{before['model_batch1_ms']:.3f} ms, model per image at batch {args.max_batch_size} "
        f"{before['model_per_image_at_max_batch_ms']:.3f} ms"
    )
    print("\n| server | concurrency | images/s | p50 ms | p95 ms | p99 ms | errors | vs plain | vs offline |")
    print("|---|---|---|---|---|---|---|---|---|")
    by = {(r["server"], r["concurrency"]): r for r in rows}
    for r in rows:
        base = by[("plain_fastapi", r["concurrency"])]["images_per_s"]
        print(
            f"| {r['server']} | {r['concurrency']} | {r['images_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} "
            f"| {r['p99_ms']:.1f} | {r['errors']} | {r['images_per_s'] / base:.2f}x | "
            f"{r['images_per_s'] / statistics.mean(offline):.0%} |"
        )
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
