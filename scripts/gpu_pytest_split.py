"""Run a pytest selection as several concurrent pytest processes (GPU tests are compile-bound:
Triton builds on the CPU, the device has 16 cores), each on a round-robin share of the collected
test ids, each under its own timeout, each logging to its own file.

    python scripts/gpu_pytest_split.py -n 4 --log-dir $OUT --timeout 400 -- tests/test_x.py -m gpu -k "d256"

Everything after ``--`` goes to pytest (collection and runs). Prints each process's last summary
line and exits non-zero if any process failed, timed out or collected nothing. (pytest-xdist is
not used: on the H100 `-n 8` over test_hopper_bwd_varlen.py printed nothing for 170 s, session 8.)
"""
import argparse
import os
import subprocess
import sys
import time

BASE = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist"]


def collect(args):
    res = subprocess.run(BASE + ["--collect-only", "-q", *args], capture_output=True, text=True)
    ids = [ln.strip() for ln in res.stdout.splitlines() if "::" in ln and not ln.startswith(" ")]
    return ids, res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=4, help="processes")
    ap.add_argument("--timeout", type=int, default=400, help="seconds each process may run")
    ap.add_argument("--log-dir", default=".", help="where pytest-<tag>-<i>.log go")
    ap.add_argument("--tag", default="split", help="log file names' tag")
    ap.add_argument("pytest_args", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    args = a.pytest_args[1:] if a.pytest_args[:1] == ["--"] else a.pytest_args
    ids, res = collect(args)
    if not ids:
        print(f"[{a.tag}] nothing collected:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
        return 2
    # options (not test files) go with each share of ids
    opts = [x for x in args if not (x.endswith(".py") or "::" in x or os.path.isdir(x))]
    if "-k" in opts:  # the ids already are the selection
        i = opts.index("-k")
        del opts[i:i + 2]
    shares = [ids[i::a.n] for i in range(a.n) if ids[i::a.n]]
    print(f"[{a.tag}] {len(ids)} tests in {len(shares)} processes", flush=True)
    os.makedirs(a.log_dir, exist_ok=True)
    procs = []
    t0 = time.time()
    # CPU threads a process: the float64 references run on the CPU, and n processes of torch's
    # default (every core) thrash (session 9: 8 such processes ran ~90 s a test, one alone ~11 s)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 16) // len(shares))))
    for i, share in enumerate(shares):
        log = open(os.path.join(a.log_dir, f"pytest-{a.tag}-{i}.log"), "w")
        cmd = ["timeout", str(a.timeout)] + BASE + ["-v", "-rf", "--tb=short", "--durations=5", *opts, *share]
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log, i))
    bad = 0
    for p, log, i in procs:
        rc = p.wait()
        log.close()
        with open(log.name) as f:
            lines = [ln.rstrip() for ln in f if ln.strip()]
        summary = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))] + lines[-1:]
        state = "TIMEOUT" if rc == 124 else f"rc {rc}"
        print(f"[{a.tag} {i}] {state}: " + "\n    ".join(summary), flush=True)
        bad += rc != 0
    print(f"[{a.tag}] {time.time() - t0:.0f} s, {bad} of {len(shares)} processes failed", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
