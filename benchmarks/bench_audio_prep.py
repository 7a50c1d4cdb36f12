"""Audio preparation benchmark: FSDD preprocessing, cached re-open, and streaming memory.

Three numbers:

* ``fsdd_prep_s``: decoding and caching every FSDD recording (2,500 WAVs here; the goal is
  3,000 files in under 15 s), once at the native 8 kHz and once resampled to 16 kHz;
* ``fsdd_reopen_s``: building the data module again on the unchanged cache, including the
  file scan that checks it is still valid (goal: well under a second);
* ``stream_peak_rss_mb``: peak resident memory while a generated corpus of ``--stream-gb``
  gigabytes of 16-bit audio is prepared as a Blizzard stream and then read once, row by
  row, through the training DataLoader (goal: under 2 GB however large the corpus). With
  ``--compare-mmap`` the same pass over ``np.memmap`` is measured too, to show why the
  datasets read with ``pread`` (mapped pages count as resident memory).

Peak RSS is per phase: the kernel's high-water mark (VmHWM) is reset before each phase
through ``/proc/self/clear_refs`` where Linux allows it. The streaming phase runs first, in
a process that has only imported the libraries, so its peak is not inflated by FSDD work.

    python benchmarks/bench_audio_prep.py                        # quick: 0.5 GB corpus
    python benchmarks/bench_audio_prep.py --stream-gb 4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zf_lightning.data.audio import AudioFolderDataModule, BlizzardDataModule  # noqa: E402

FSDD = ROOT.parent / "shared" / "data" / "fsdd"


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set size since the last reset (VmHWM), else since the process began."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def bench_fsdd(root: Path, cache: Path, sample_rate: int) -> dict[str, float]:
    """Preparation and re-open times of the whole folder at one sample rate."""
    kwargs: dict[str, Any] = {
        "root": root, "sample_rate": sample_rate, "cache_dir": cache, "cache_next_to_data": False,
        "split": "regex", "test_pattern": r"_[0-4]\.wav$", "label_pattern": r"^(\d+)_",
    }  # fmt: skip
    start = time.perf_counter()
    dm = AudioFolderDataModule(**kwargs)
    dm.setup()
    prep = time.perf_counter() - start
    assert dm.corpus is not None
    files = len(dm.corpus.files)
    reopen = []
    for _ in range(3):
        start = time.perf_counter()
        again = AudioFolderDataModule(**kwargs)
        again.setup()
        reopen.append(time.perf_counter() - start)
        assert again.corpus is not None and again.corpus.directory == dm.corpus.directory
    return {
        "files": files,
        "seconds_of_audio": dm.corpus.meta["seconds"],
        "prep_s": prep,
        "files_per_s": files / prep,
        "reopen_s": float(np.median(reopen)),
    }


def generate_corpus(folder: Path, gigabytes: float, rate: int, minutes_per_file: float) -> dict[str, float]:
    """WAV files of seeded noise totalling ``gigabytes`` of int16 samples (written block by block)."""
    folder.mkdir(parents=True, exist_ok=True)
    total = int(gigabytes * 1e9 / 2)
    per_file = int(minutes_per_file * 60 * rate)
    block = np.random.default_rng(0).standard_normal(rate * 10).astype(np.float32) * 0.1
    written, index = 0, 0
    start = time.perf_counter()
    while written < total:
        n = min(per_file, total - written)
        gain = 0.5 + (index % 7) / 7
        with sf.SoundFile(str(folder / f"chapter_{index:05d}.wav"), "w", rate, 1, "PCM_16") as out:
            done = 0
            while done < n:
                m = min(len(block), n - done)
                out.write(block[:m] * gain)
                done += m
        written += n
        index += 1
    return {"files": index, "samples": written, "generate_s": time.perf_counter() - start}


def bench_stream(
    folder: Path, cache: Path, batch_size: int, workers: int, compare_mmap: bool
) -> dict[str, float]:
    """Prepare the folder as one Blizzard stream, then read every training row once."""
    resettable = reset_peak_rss()
    base = current_rss_mb()
    start = time.perf_counter()
    dm = BlizzardDataModule(root=folder, cache_dir=cache, batch_size=batch_size, num_workers=workers)
    dm.setup()
    prep = time.perf_counter() - start
    prep_peak = peak_rss_mb()
    assert dm.corpus is not None and dm.train_set is not None

    reset_peak_rss()
    start = time.perf_counter()
    rows = 0
    checksum = 0.0
    for batch in dm.train_dataloader():
        rows += batch.batch_size
        checksum += float(batch.inputs[:, 0, 0].sum())
    read = time.perf_counter() - start
    result = {
        "stream_gb": 2 * len(dm.corpus.stream) / 1e9,
        "rows": rows,
        "rss_before_mb": base,
        "prep_s": prep,
        "prep_peak_rss_mb": prep_peak,
        "read_s": read,
        "rows_per_s": rows / read,
        "stream_peak_rss_mb": peak_rss_mb(),
        "peak_is_per_phase": resettable,
    }
    if compare_mmap:
        reset_peak_rss()
        mapped = dm.corpus.stream.memmap()
        row = dm.seq_frames * dm.frame_size
        total = 0
        for i in range(0, len(mapped) - row, row):
            total += int(mapped[i : i + row].astype(np.int64).sum())
        result["mmap_pass_peak_rss_mb"] = peak_rss_mb()
        del mapped
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fsdd", type=Path, default=FSDD, help="FSDD folder (skipped when absent)")
    parser.add_argument("--stream-gb", type=float, default=0.5, help="size of the generated corpus (int16)")
    parser.add_argument("--minutes-per-file", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for the streaming pass")
    parser.add_argument("--compare-mmap", action="store_true", help="also measure a pass over np.memmap")
    parser.add_argument("--workdir", type=Path, default=None, help="where to generate (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated corpus and caches")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="zf_audio_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads},
    }
    try:
        gen = generate_corpus(work / "corpus", args.stream_gb, 16000, args.minutes_per_file)
        results["generated"] = gen
        size_gb = 2 * gen["samples"] / 1e9
        print(f"generated {gen['files']} files, {size_gb:.2f} GB in {gen['generate_s']:.1f} s", flush=True)
        res = bench_stream(work / "corpus", work / "cache", args.batch_size, args.workers, args.compare_mmap)
        results["stream"] = res
        print(
            f"stream of {res['stream_gb']:.2f} GB (process RSS {res['rss_before_mb']:.0f} MB before): "
            f"prepared in {res['prep_s']:.1f} s "
            f"(peak RSS {res['prep_peak_rss_mb']:.0f} MB); read {res['rows']} rows in {res['read_s']:.1f} s "
            f"({res['rows_per_s']:.0f} rows/s), peak RSS while streaming {res['stream_peak_rss_mb']:.0f} MB"
            + ("" if res["peak_is_per_phase"] else " (process-wide peak: VmHWM could not be reset)")
        )
        if "mmap_pass_peak_rss_mb" in res:
            mapped_peak = res["mmap_pass_peak_rss_mb"]
            print(f"for comparison, one pass over np.memmap peaks at {mapped_peak:.0f} MB RSS")
        if (args.fsdd / "recordings").is_dir():
            for rate in (8000, 16000):
                res = bench_fsdd(args.fsdd, work / "cache", rate)
                results[f"fsdd_{rate}hz"] = res
                print(
                    f"FSDD @ {rate} Hz: {res['files']} files ({res['seconds_of_audio']:.0f} s of audio) "
                    f"prepared in {res['prep_s']:.2f} s ({res['files_per_s']:.0f} files/s); "
                    f"cached re-open {res['reopen_s'] * 1000:.0f} ms",
                    flush=True,
                )
        else:
            print(f"FSDD absent at {args.fsdd}; skipping its timings", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
