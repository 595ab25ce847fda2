"""Bytes for a change (delta downloads) and throughput under the download rate limit (issue 14).

Set-up: a generated application of ``--files`` files and ``--mib`` MiB (by
default 500 files, 50 MiB: 450 source files of Python-like text, 50 model
files of random bytes, a ``requirements.txt``), published as v1.0.0 to a real
``javia server``; a device holds v1.0.0 unpacked (``releases/v1.0.0``). Each
change is published as a new version against it:

- one changed line in one source file;
- one changed dependency in ``requirements.txt``;
- one new 1 MiB file (random bytes);
- 4 KiB changed inside one 1 MiB model file (a patch's case).

Measured for each: the bytes the device downloads with the agent's own delta
download (:func:`javia_agent.delta_download.fetch_delta`, real HTTP, every
file verified), counted by the server (``GET /api/v1/downloads/stats``: body
bytes of objects and patches) plus the delta index; against the full
package (its ``payload.tar.gz``) and against ``zstd --patch-from`` of the
whole uncompressed archive (``zstd -19 --long=27 --patch-from=v1.tar
v2.tar``, the reference a whole-image delta would reach; /usr/bin/zstd).
Every version's ``VERSION`` file changes too, as in a real publish.

Throughput: the archive of a package of random bytes (4 s worth at the cap)
downloaded by a device client with ``download_rate_limit`` 512 KiB/s and
2 MiB/s; target: measured rate within 10 % of the cap.

Run alone: ``python bench/bench_deltas.py [--files 500] [--mib 50]``.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx

import benchlib
from benchlib import MIB, BenchResult, Row
from javia_agent.client import DeviceClient
from javia_agent.delta_download import fetch_delta
from javia_agent.verification import extract_payload
from javia_core.models import UpdateType
from javia_core.versioning import Version
from javia_updates.keys import load_private_key
from javia_updates.packaging import BuiltPackage, build_package

ZSTD = shutil.which("zstd") or "/usr/bin/zstd"
MODEL_FILES = 50
LINE = "    value_{n} = compute_{k}(request, context, timeout={t})  # step {n}\n"


def make_app(root: Path, files: int, total_bytes: int, seed: int = 1) -> None:
    """``files`` files of ``total_bytes`` in all: text sources, random models, requirements.txt."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    (root / "requirements.txt").write_text(
        "".join(f"package{n}=={n}.{n % 7}.0\n" for n in range(20)) + "numpy==1.26.0\n"
    )
    models = min(MODEL_FILES, files // 10)
    sources = files - models - 1
    model_bytes = int(total_bytes * 0.8) // models
    source_bytes = (total_bytes - model_bytes * models) // sources
    for n in range(models):
        path = root / "models" / f"model{n:03d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(model_bytes))
    for n in range(sources):
        lines = []
        size = 0
        while size < source_bytes:
            line = LINE.format(n=len(lines), k=rng.randrange(1000), t=rng.randrange(60))
            lines.append(line)
            size += len(line)
        path = root / "assistant" / f"module{n // 50:02d}" / f"source{n:03d}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(lines))


def _change(source: Path, target: Path, scenario: str) -> None:
    shutil.copytree(source, target)
    if scenario == "line":
        path = target / "assistant" / "module00" / "source001.py"
        lines = path.read_text().splitlines(keepends=True)
        lines[len(lines) // 2] = "    value = compute_fixed(request, context)  # the fix\n"
        path.write_text("".join(lines))
    elif scenario == "requirements":
        path = target / "requirements.txt"
        path.write_text(path.read_text().replace("numpy==1.26.0", "numpy==1.26.4"))
    elif scenario == "new-file":
        (target / "models" / "new-voice.bin").write_bytes(random.Random(9).randbytes(MIB))
    elif scenario == "model-block":
        path = target / "models" / "model001.bin"
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 4096] = random.Random(5).randbytes(4096)
        path.write_bytes(bytes(data))


def _build(fleet: Any, source: Path, output: Path, version: str) -> BuiltPackage:
    return build_package(
        source,
        output,
        version=Version.parse(version),
        update_type=UpdateType.SCHEDULED,
        description=f"bench {version}",
        system_packages=(),
        private_key=load_private_key(fleet.private_key_path),
        now=datetime.now(UTC),
        app_name="assistant",
    )


def _publish(fleet: Any, built: BuiltPackage, device_uuid: str) -> int:
    with fleet.client() as admin:
        update = admin.publish(
            manifest_path=built.manifest_path,
            signature_path=built.signature_path,
            payload_path=built.payload_path,
            targets=[device_uuid],
        )
    return int(update.id)


def _tar(payload: Path, output: Path) -> Path:
    with output.open("wb") as handle:
        subprocess.run(["gzip", "-dc", str(payload)], stdout=handle, check=True)
    return output


def _zstd_patch(old_tar: Path, new_tar: Path, output: Path) -> int:
    subprocess.run(
        [
            ZSTD,
            "-q",
            "-f",
            "-19",
            "--long=27",
            f"--patch-from={old_tar}",
            str(new_tar),
            "-o",
            str(output),
        ],
        check=True,
        stderr=subprocess.DEVNULL,  # zstd's tuning advice for --patch-from
    )
    return output.stat().st_size


def _stats(fleet: Any) -> dict[str, Any]:
    answer = httpx.get(
        f"{fleet.url}/api/v1/downloads/stats", headers={"X-API-Key": fleet.api_key}, timeout=30
    )
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    return body


def _sent(before: dict[str, Any], after: dict[str, Any]) -> tuple[int, int]:
    kinds = ("objects", "patches", "archive")
    sent = sum(after["bytes"].get(k, 0) - before["bytes"].get(k, 0) for k in kinds)
    requests = sum(after["requests"].get(k, 0) - before["requests"].get(k, 0) for k in kinds)
    return sent, requests


def _percent(value: float, whole: float) -> str:
    return f"{100 * value / whole:.3f} %"


def main() -> None:
    def extra(parser: Any) -> None:
        parser.add_argument("--files", type=benchlib.positive(int), default=500)
        parser.add_argument("--mib", type=benchlib.positive(float), default=50.0)

    args = benchlib.main_arguments(__doc__.splitlines()[0], extra)
    started = time.perf_counter()
    result = BenchResult(
        name="deltas",
        title=f"Bytes for a change ({args.files} files, {args.mib:g} MiB) and the bandwidth cap",
        command=f"python bench/bench_deltas.py --files {args.files} --mib {args.mib:g}",
    )
    with benchlib.scratch_dir("deltas") as root, benchlib.javia_server(root / "fleet") as fleet:
        base_source = root / "app-v1"
        make_app(base_source, args.files, int(args.mib * MIB))
        with fleet.client() as admin:
            registered = admin.register_device(device_name="bench", timezone="UTC")
        device_uuid, token = str(registered.device_uuid), registered.device_token
        base = _build(fleet, base_source, root / "pkg-v1", "v1.0.0")
        _publish(fleet, base, device_uuid)
        releases = root / "device" / "releases"
        releases.mkdir(parents=True)
        extract_payload(base.payload_path, base.manifest, releases / "v1.0.0")
        base_tar = _tar(base.payload_path, root / "v1.tar")
        scenarios = [
            ("line", "one changed line in one file", "v1.1.0", 0.005),
            ("requirements", "one changed dependency in requirements.txt", "v1.2.0", None),
            ("new-file", "one new 1 MiB file", "v1.3.0", None),
            ("model-block", "4 KiB changed inside a 1 MiB model file", "v1.4.0", None),
        ]
        for scenario, label, version, target in scenarios:
            source = root / f"app-{version}"
            _change(base_source, source, scenario)
            built = _build(fleet, source, root / f"pkg-{version}", version)
            update_id = _publish(fleet, built, device_uuid)
            before = _stats(fleet)
            package_dir = root / "device" / "downloads" / version
            package_dir.mkdir(parents=True)
            with DeviceClient(fleet.url, device_uuid=device_uuid, token=token) as client:
                index_bytes = len(
                    httpx.get(
                        f"{fleet.url}/api/v1/updates/{update_id}/delta-index",
                        headers={"Authorization": f"Bearer {token}"},
                        timeout=30,
                    ).content
                )
                began = time.perf_counter()
                plan = fetch_delta(
                    client, built.manifest, update_id, package_dir, [releases / "v1.0.0"]
                )
                seconds = time.perf_counter() - began
            if plan is None:
                raise SystemExit(f"{label}: the agent chose the archive")
            sent, requests = _sent(before, _stats(fleet))
            delta = sent + index_bytes
            full = built.manifest.archive.size
            reference = _zstd_patch(
                base_tar, _tar(built.payload_path, root / f"{version}.tar"), root / "p.zst"
            )
            values = {
                "delta_bytes": delta,
                "object_and_patch_bytes": sent,
                "index_bytes": index_bytes,
                "requests": requests,
                "full_bytes": full,
                "zstd_patch_from_bytes": reference,
                "seconds": seconds,
            }
            result.rows.append(
                Row(
                    f"{label}: bytes downloaded, against the full package",
                    f"{delta:,} B ({_percent(delta, full)}; {requests} requests)",
                    f"{full:,} B",
                    benchlib.ratio_text(delta, full),
                    "≤ 0.5 % of the full package" if target else "",
                    (delta <= target * full) if target else None,
                    values,
                )
            )
            result.rows.append(
                Row(
                    f"{label}: against zstd --patch-from of the whole archive",
                    f"{delta:,} B",
                    f"{reference:,} B",
                    benchlib.ratio_text(delta, reference),
                    "",
                    None,
                    values,
                )
            )
            shutil.rmtree(source)
        for cap in (512 * 1024, 2 * MIB):
            source = root / f"app-cap-{cap}"
            source.mkdir()
            (source / "blob.bin").write_bytes(random.Random(cap).randbytes(4 * cap))
            version = "v2.0.0" if cap < MIB else "v2.1.0"
            built = _build(fleet, source, root / f"pkg-{version}", version)
            update_id = _publish(fleet, built, device_uuid)
            with DeviceClient(
                fleet.url, device_uuid=device_uuid, token=token, download_rate_limit=cap
            ) as client:
                began = time.perf_counter()
                client.download_payload(
                    f"/api/v1/updates/{update_id}/download",
                    root / f"cap-{cap}.tar.gz",
                    built.manifest.archive.size,
                )
                seconds = time.perf_counter() - began
            rate = built.manifest.archive.size / seconds
            result.rows.append(
                Row(
                    f"download rate with download_rate_limit {cap // 1024} KiB/s",
                    f"{rate / 1024:,.0f} KiB/s ({built.manifest.archive.size:,} B in {seconds:.2f} s)",
                    f"{cap // 1024} KiB/s",
                    benchlib.ratio_text(rate, cap),
                    "within 10 % of the cap",
                    abs(rate - cap) <= 0.1 * cap,
                    {"rate": rate, "cap": cap, "seconds": seconds},
                )
            )
    result.notes.append(
        "Delta bytes = object and patch bodies the server sent (its own counters) + the delta "
        "index; request headers (about 600 B a request) not included. zstd reference: "
        "`zstd -19 --long=27 --patch-from=v1.tar v2.tar` of the uncompressed archives."
    )
    benchlib.finish(result, args, started)


if __name__ == "__main__":
    main()
