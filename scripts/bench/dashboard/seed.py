"""Seeds a cranium project and its SQLite store for scripts/bench/dashboard.sh.

JOBS job files of STEPS steps each (a chain with a few branches), hourly from 2026-01-01, and in
the store (created by `cranium runs`, so the schema is the binary's own) one run, STEPS step
records and STEPS attempts for each of INTERVALS intervals of every job: success mostly, some
failed with their downstream upstream_failed, a few retried. One attempt's log is a LOG_MB file.
Usage: python3 seed.py CRANIUM_BIN DIR JOBS INTERVALS STEPS LOG_MB
"""
import datetime as dt
import os
import random
import sqlite3
import subprocess
import sys

binary, root = sys.argv[1], sys.argv[2]
jobs, intervals, steps, log_mb = map(int, sys.argv[3:7])
start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
os.makedirs(os.path.join(root, "jobs"), exist_ok=True)


def ts(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def name(j):
    return f"job_{j:02d}"


for j in range(jobs):
    lines = [f"job: {name(j)}", f"owner: team_{j % 5}", 'schedule: "0 * * * *"', "start: 2026-01-01", "catchup: false", "steps:"]
    for s in range(steps):
        lines.append(f"  - id: step_{s:02d}")
        lines.append("    kind: noop")
        if s > 0:
            up = s - 1 if s % 4 else max(0, s - 3)
            lines.append(f"    after: [step_{up:02d}]")
    with open(os.path.join(root, "jobs", f"{name(j)}.yaml"), "w") as f:
        f.write("\n".join(lines) + "\n")

# The store's schema is the binary's own: it creates the store.
subprocess.run([binary, "--project", root, "runs", "--limit", "1"], check=True, stdout=subprocess.DEVNULL)
db = sqlite3.connect(os.path.join(root, ".cranium", "state.db"))
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=OFF")
rng = random.Random(42)
run_id = 0
attempt_id = 0
log_dir = os.path.join(root, ".cranium", "logs")
big_log = None
for j in range(jobs):
    runs, recs, atts = [], [], []
    for i in range(intervals):
        s0 = start + dt.timedelta(hours=i)
        s1 = s0 + dt.timedelta(hours=1)
        run_id += 1
        fail_at = rng.randrange(steps) if rng.random() < 0.03 else None
        began = s1 + dt.timedelta(seconds=5)
        t = began
        state = "failed" if fail_at is not None else "success"
        for s in range(steps):
            st = "success"
            if fail_at is not None and s == fail_at:
                st = "failed"
            elif fail_at is not None and s > fail_at:
                st = "upstream_failed"
            dur = rng.randint(50, 4000)
            attempt_id += 1
            end = t + dt.timedelta(milliseconds=dur)
            log = f".cranium/logs/{name(j)}/{s0.strftime('%Y%m%dT%H%M%SZ')}/step_{s:02d}/run-{run_id}-attempt-1.log"
            if st != "upstream_failed":
                atts.append((attempt_id, run_id, name(j), f"step_{s:02d}", ts(s0), ts(s1), 1, st, ts(t), ts(end), dur,
                             "boom: a row failed the check" if st == "failed" else None, rng.randint(0, 10**6), None, log, "null"))
            recs.append((name(j), f"step_{s:02d}", ts(s0), ts(s1), st, run_id, 1, "null", ts(end)))
            t = end
        runs.append((run_id, name(j), ts(s0), ts(s1), state, "schedule", ts(began), ts(began), ts(t), ts(t), "daemon", 0))
        if j == 0 and i == intervals - 1:
            big_log = (f".cranium/logs/{name(j)}/{s0.strftime('%Y%m%dT%H%M%SZ')}/step_00/run-{run_id}-attempt-1.log", s0)
    db.executemany("INSERT INTO runs (id, job, interval_start, interval_end, state, \"trigger\", created_at, started_at, ended_at, heartbeat_at, executor, priority) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", runs)
    db.executemany("INSERT INTO step_intervals (job, step, interval_start, interval_end, state, run_id, attempt, outputs, updated_at) VALUES (?,?,?,?,?,?,?,?,?)", recs)
    db.executemany("INSERT INTO step_attempts (id, run_id, job, step, interval_start, interval_end, attempt, state, started_at, ended_at, duration_ms, error, rows_affected, bytes, log_path, outputs) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", atts)
    db.commit()
db.execute("ANALYZE")
db.commit()
db.close()

# The newest interval of job_00, step_00: a LOG_MB log.
rel, s0 = big_log
path = os.path.join(root, rel)
os.makedirs(os.path.dirname(path), exist_ok=True)
line = "2026-03-25T07:00:00.000Z INFO  copied a batch of rows into the warehouse: batch {} of the hour, 1000 rows, 64 KiB\n"
with open(path, "w") as f:
    n, size = 0, 0
    target = log_mb << 20
    while size < target:
        chunk = "".join(line.format(n + k) for k in range(10000))
        f.write(chunk)
        size += len(chunk)
        n += 10000
print(f"seeded {jobs} jobs x {intervals} intervals x {steps} steps; a {log_mb} MB log for {name(0)}.step_00 at {ts(s0)}")
