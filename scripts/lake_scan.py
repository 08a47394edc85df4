#!/usr/bin/env python3
"""What a full scan of a local lake costs in DuckDB, and what the lake holds.

Usage: scripts/lake_scan.py LAKE_DIR [--runs N]

Prints the lake's objects, row groups, rows and bytes, then the time of a scan that reads
every column of every row (the minimum of N runs, 7 by default, on DuckDB's default threads).
Run it with the Python that has duckdb (scripts/backends install puts one under
$CP_BACKENDS_DIR/venv). Selective reads are measured by `loadtest verify` ("lake reads").
"""

import argparse
import pathlib
import sys
import time

import duckdb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lake", type=pathlib.Path, help="the lake's directory (CLASSPULSE_LAKE_URL file://...)")
    parser.add_argument("--runs", type=int, default=7, help="scans to take the fastest of")
    args = parser.parse_args()

    files = sorted((args.lake / "events").glob("dt=*/hour=*/*.parquet"))
    if not files:
        print(f"no Parquet objects under {args.lake / 'events'}", file=sys.stderr)
        return 1
    glob = str(args.lake / "events" / "*" / "*" / "*.parquet")
    con = duckdb.connect()
    groups, rows = con.execute(
        f"SELECT count(DISTINCT (file_name, row_group_id)), sum(row_group_num_rows) / count(DISTINCT column_id) "
        f"FROM parquet_metadata('{glob}')"
    ).fetchone()
    size = sum(f.stat().st_size for f in files)
    print(f"objects {len(files)}, row groups {groups}, rows {int(rows)}, bytes {size} ({size / rows:.1f} a row)")

    # Every column of every row, hashed so that nothing can be skipped or pushed down.
    scan = f"SELECT sum(hash(COLUMNS(*))) FROM read_parquet('{glob}', hive_partitioning = true)"
    times = []
    for _ in range(args.runs):
        started = time.perf_counter()
        con.execute(scan).fetchall()
        times.append(time.perf_counter() - started)
    print(f"full scan {min(times):.3f} s (fastest of {args.runs}; median {sorted(times)[len(times) // 2]:.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
