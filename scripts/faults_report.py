#!/usr/bin/env python3
"""Turns the fault scenarios' JSON lines into tests/faults/REPORT.md.

Usage: faults_report.py RESULTS_JSONL REPORT_MD [FUZZ_SUMMARY_TSV]

Each line of RESULTS_JSONL is one scenario run (fault, target, transport,
sent, delivered, lost, doubled, set_aside, evicted, seconds_to_recover, passed,
note). When a scenario ran more than once, its last line wins.
"""
import csv
import datetime
import json
import os
import subprocess
import sys


def git_revision(root):
    try:
        return subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    results_path, report_path = sys.argv[1], sys.argv[2]
    fuzz_path = sys.argv[3] if len(sys.argv) > 3 else ""
    runs = {}
    if os.path.exists(results_path):
        with open(results_path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                r = json.loads(line)
                runs[(r["target"], r["fault"], r["transport"])] = r
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = []
    out.append("# Fault-injection report")
    out.append("")
    out.append("Written by `scripts/faults-report.sh` from the JSON lines the "
               "`faults` scenarios append (`build/faults/results.jsonl`, or "
               "`$FLEETD_FAULTS_RESULTS`). Do not edit by hand. To regenerate:")
    out.append("")
    out.append("```sh")
    out.append("scripts/faults-report.sh --run   # builds, runs ctest -L faults, "
               "writes this file")
    out.append("scripts/faults-report.sh         # only rewrites this file from "
               "the last results")
    out.append("```")
    out.append("")
    total = len(runs)
    passed = sum(1 for r in runs.values() if r.get("passed"))
    sent = sum(r["sent"] for r in runs.values())
    lost = sum(r["lost"] for r in runs.values())
    doubled = sum(r["doubled"] for r in runs.values())
    out.append(f"Generated {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC at "
               f"revision `{git_revision(root)}`. **{passed} of {total} "
               f"scenarios pass**; over all scenarios {sent} records sent, "
               f"{lost} lost, {doubled} doubled.")
    out.append("")
    out.append("Every scenario runs three devices (own SQLite store each) that "
               "sync metrics, logs and events with a unique `rec` identity "
               "through our fault proxy to a real `fleetd-server`, which "
               "writes through fault proxies to real VictoriaMetrics, "
               "ClickHouse, PostgreSQL and our Loki receiver. Each record is "
               "counted in its backend: *delivered* = distinct identities "
               "found, *doubled* = extra copies, *set aside* = records the "
               "agents set aside, *evicted* = records the store quota "
               "evicted (counted), *lost* = sent - delivered - set aside - "
               "evicted. *Recover* = seconds from the end of the fault until "
               "every record was visible. A transient fault passes with lost "
               "= doubled = set aside = 0; the poison scenario with only the "
               "poison batch set aside.")
    out.append("")
    targets = sorted({k[0] for k in runs})
    for target in targets:
        out.append(f"## {target}")
        out.append("")
        out.append("| fault | transport | sent | delivered | lost | doubled "
                   "| set aside | evicted | recover (s) | result | note |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
        for key in sorted(k for k in runs if k[0] == target):
            r = runs[key]
            note = r.get("note", "")
            if len(note) > 200:
                note = note[:200] + "…"
            out.append(
                f"| {cell(r['fault'])} | {r['transport']} | {r['sent']} | "
                f"{r['delivered']} | {r['lost']} | {r['doubled']} | "
                f"{r['set_aside']} | {r['evicted']} | "
                f"{r['seconds_to_recover']:.1f} | "
                f"{'pass' if r.get('passed') else '**FAIL**'} | {cell(note)} |")
        out.append("")
    out.append("## Fuzzing")
    out.append("")
    if fuzz_path and os.path.exists(fuzz_path):
        with open(fuzz_path, encoding="utf-8") as f:
            rows = [row for row in csv.reader(f, delimiter="\t") if row]
        if rows:
            out.append(f"From `{os.path.relpath(fuzz_path, root)}`.")
            out.append("")
            out.append("| " + " | ".join(cell(c) for c in rows[0]) + " |")
            out.append("|" + "---|" * len(rows[0]))
            for row in rows[1:]:
                out.append("| " + " | ".join(cell(c) for c in row) + " |")
            out.append("")
    else:
        out.append("No fuzz summary (`fuzz/results/summary.tsv`) yet.")
        out.append("")
    with open(report_path, "w", encoding="utf-8") as f:
        f.write("\n".join(out))
    print(f"wrote {report_path}: {passed}/{total} scenarios pass")


if __name__ == "__main__":
    main()
