"""Ingest benchmark: validation throughput and peak memory on a large national-format GB SMS file.

    python bench/ingest_bench.py                 # 1,000,000 rows
    python bench/ingest_bench.py --rows 100000   # smaller

Generates the file in a temporary directory, then runs, each in its own subprocess (under
`/usr/bin/time -v` when available, for the peak RSS):
  * a bare loop: csv.reader + phonenumbers.parse + is_valid_number + format_number(E164);
  * open_recipient_file(...).iter_verdicts() + summarize, with workers=1 and workers=2.
Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FIRST_NAMES = ("Ann", "Bob", "Chloé", "Dev", "Eve", "Finn", "Grace", "Hiro", "Isla", "Jon")


def _national(n: int, style: int) -> str:
    """Valid GB mobile number n (07911 0/2/8xxxxx, 07400-07404 xxxxxx), written in one of five ways."""
    prefix, m = n % 6, n // 6
    if prefix == 0:
        area, local = "7911", f"{(0, 2, 8)[m % 3]}{m // 3:05d}"
    else:
        area, local = f"740{prefix - 1}", f"{m:06d}"
    style %= 5
    if style == 0:
        return f"0{area} {local}"
    if style == 1:
        return f"0{area}{local}"
    if style == 2:
        return f"+44 {area} {local}"
    if style == 3:
        return f"(0{area}) {local[:3]} {local[3:]}"
    return f"0044 {area} {local}"


def generate(path: Path, rows: int, seed: int = 7) -> dict[str, int]:
    """Write the benchmark file: ~2% invalid, ~2% duplicates of earlier rows written another way."""
    rng = random.Random(seed)
    invalid = duplicates = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("first_name,phone,customer_id\r\n")
        for i in range(rows):
            roll = rng.random()
            if roll < 0.02:
                invalid += 1
                phone = rng.choice(("07911 12", "07911 2234567", "0791 ABC 123", "", "4.47911E+11"))
            elif roll < 0.04 and i > 0:
                duplicates += 1
                j = rng.randrange(i)
                phone = _national(j, j + 1 + rng.randrange(4))  # an earlier number, written differently
            else:
                phone = _national(i, i)
            f.write(f"{FIRST_NAMES[i % 10]},{phone},C{i:07d}\r\n")
    return {"invalid": invalid, "duplicates": duplicates}


# -- children ------------------------------------------------------------------------------------------

def child_bare(path: str) -> dict:
    import csv

    import phonenumbers
    from phonenumbers import PhoneNumberFormat

    start, cpu = time.perf_counter(), time.process_time()
    rows = valid = 0
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        next(reader)
        for cells in reader:
            rows += 1
            try:
                number = phonenumbers.parse(cells[1], "GB")
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_valid_number(number):
                phonenumbers.format_number(number, PhoneNumberFormat.E164)
                valid += 1
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "cpu_seconds": time.process_time() - cpu, "rows": rows, "valid_numbers": valid}


def child_validate(path: str, workers: int) -> dict:
    from worker.ingest import IngestOptions, open_recipient_file, summarize

    start, cpu = time.perf_counter(), time.process_time()
    recipients = open_recipient_file(path, IngestOptions(channel="sms", region="GB", workers=workers))
    opened = time.perf_counter() - start
    counts = summarize(recipients.iter_verdicts())
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "cpu_seconds": time.process_time() - cpu, "open_seconds": opened, "counts": counts}


def _own_peaks() -> dict:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return {"self_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20,
            "children_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale / 2**20}


# -- parent ----------------------------------------------------------------------------------------------

def _tree_rss_sampler(pid: int, stop: threading.Event, out: dict) -> None:
    """Peak of the summed RSS of a process and its descendants (psutil, if installed)."""
    try:
        import psutil
    except ImportError:
        return
    peak = 0
    try:
        root = psutil.Process(pid)
        while not stop.is_set():
            total = 0
            for proc in [root, *root.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            peak = max(peak, total)
            stop.wait(0.1)
    except psutil.Error:
        pass
    out["tree_peak_mb"] = peak / 2**20


def run_child(args: list[str]) -> dict:
    cmd = [sys.executable, __file__, *args]
    timed = shutil.which("time") and os.path.exists("/usr/bin/time")
    if timed:
        cmd = ["/usr/bin/time", "-v", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    stop, tree = threading.Event(), {}
    sampler = threading.Thread(target=_tree_rss_sampler, args=(proc.pid, stop, tree), daemon=True)
    sampler.start()
    out, err = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed ({proc.returncode}):\n{err}")
    result = json.loads(out.strip().splitlines()[-1])
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    if match:
        result["time_v_peak_mb"] = int(match.group(1)) / 1024
    result.update(tree)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dir", help="where to write the file (default: a temporary directory)")
    parser.add_argument("--child", choices=("bare", "validate"), help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "bare":
        print(json.dumps({**child_bare(args.file), **_own_peaks()}))
        return
    if args.child == "validate":
        print(json.dumps({**child_validate(args.file, args.workers), **_own_peaks()}))
        return

    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    tmp = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    try:
        path = tmp / "recipients.csv"
        start = time.perf_counter()
        made = generate(path, args.rows)
        print(f"generated {args.rows:,} rows ({path.stat().st_size / 2**20:.1f} MB, ~{made['invalid']:,} invalid, "
              f"~{made['duplicates']:,} duplicates) in {time.perf_counter() - start:.1f} s; "
              f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
        bare = run_child(["--child", "bare", "--file", str(path)])
        bare_rate = bare["rows"] / bare["seconds"]
        print(f"bare loop (parse + is_valid + format):  {bare_rate:10,.0f} rows/s  ({bare['seconds']:.1f} s wall, "
              f"{bare['cpu_seconds']:.1f} s CPU)")
        for workers in (1, 2):
            got = run_child(["--child", "validate", "--file", str(path), "--workers", str(workers)])
            rate = got["counts"]["rows"] / got["seconds"]
            peaks = [f"time -v max RSS {got['time_v_peak_mb']:.0f} MB"] if "time_v_peak_mb" in got else []
            peaks.append(f"main process {got['self_peak_mb']:.0f} MB")
            if "tree_peak_mb" in got:
                peaks.append(f"sum over process tree {got['tree_peak_mb']:.0f} MB")
            print(f"ingest workers={workers}:                 {rate:10,.0f} rows/s  ({got['seconds']:.1f} s, "
                  f"of which {got['open_seconds']:.1f} s up-front checks)  = {rate / bare_rate:.2f}x bare; "
                  f"peak RSS: {', '.join(peaks)}")
            cpu_note = ""
            if workers == 1:  # everything runs in one process: CPU time is robust to other load on the box
                cpu_note = f"; by CPU time {bare['cpu_seconds'] / got['cpu_seconds']:.2f}x bare"
            print(f"  counts: {json.dumps(got['counts'])}{cpu_note}")
        print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        if not args.dir:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
