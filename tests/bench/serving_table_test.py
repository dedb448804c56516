"""bench/serving_table.py --before/--after: medians over sweeps, their
ranges and the ratio, from sweep directories written here (fixed values)."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

TABLE = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "serving_table.py")


def step(conc, vps, p50, batch, kernel_ms, host_us):
    return {"concurrency": conc, "vectors_per_s": vps,
            "latency_ms": {"p50": p50, "p99": 2 * p50},
            "server": {"batch_mean": batch, "kernel_ms_mean": kernel_ms, "host_us_mean": host_us}}


def sweep(root, name, scale):
    d = os.path.join(root, name)
    os.makedirs(d)
    run = {"steps": [step(1, 1000 * scale, 0.2 / scale, 1.0, 0.05, 15.0 / scale),
                     step(64, 40000 * scale, 1.0 / scale, 8.0 * scale, 0.06, 20.0)]}
    echo = {"steps": [step(1, 2000, 0.1, 1.0, 0, 0), step(64, 80000, 0.5, 1.0, 0, 0)]}
    for kind, doc in [("stream", run), ("echo-stream", echo)]:
        with open(os.path.join(d, f"serving-{kind}.json"), "w") as f:
            json.dump(doc, f)
    with open(os.path.join(d, "serving-half-peak.json"), "w") as f:
        json.dump({"steps": [dict(step(0, 30000 * scale, 1.0, 1.0, 0, 0), requests_per_s=30000 * scale)]}, f)
    return d


class CompareTest(unittest.TestCase):
    def test_medians_ranges_and_ratios(self):
        with tempfile.TemporaryDirectory() as root:
            before = [sweep(root, f"b{i}", s) for i, s in enumerate([1.0, 1.1, 0.9])]
            after = [sweep(root, f"a{i}", s) for i, s in enumerate([2.0, 1.8, 2.2])]
            out = subprocess.run([sys.executable, TABLE, "--before", *before, "--after", *after],
                                 check=True, capture_output=True, text=True).stdout
        rows = {tuple(c.strip() for c in line.strip("|").split("|")[:3]): line
                for line in out.splitlines() if line.startswith("| streaming")}
        vps = rows[("streaming", "1", "vectors/s")]
        self.assertIn("1,000 [900–1,100]", vps)
        self.assertIn("2,000 [1,800–2,200]", vps)
        self.assertTrue(vps.rstrip().endswith("| 2.00 |"), vps)
        self.assertTrue(rows[("streaming", "1", "ratio to Echo")].rstrip().endswith("| 2.00 |"))
        self.assertIn("| 0.50 |", rows[("streaming", "1", "p50 ms")])
        self.assertIn("8.000 [7.200–8.800]", rows[("streaming", "64", "mean batch")])
        self.assertTrue(rows[("streaming", "64", "kernel µs")].rstrip().endswith("| 1.00 |"))
        self.assertNotIn("unary", out)  # no unary sweeps given
        self.assertIn("Open loop at half the peak, after: 60,000/s", out)

    def test_before_without_after_is_refused(self):
        r = subprocess.run([sys.executable, TABLE, "--before", "x"], capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--before and --after go together", r.stderr)


if __name__ == "__main__":
    unittest.main()
