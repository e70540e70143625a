"""Review agent: flags files longer than `max_lines` and TODO/FIXME markers."""
import json
import sys

task = json.load(sys.stdin)
inventory = task["input"]  # the analyst's output, handed over by the engine
limit = inventory["max_lines"]
findings = []
for f in inventory["files"]:
    if f["lines"] > limit:
        findings.append({"path": f["path"], "issue": f"{f['lines']} lines (limit {limit}): split it"})
    for line in f["todos"]:
        findings.append({"path": f"{f['path']}:{line}", "issue": "TODO/FIXME left in the code"})
verdict = "approved" if not findings else "changes requested"
print(f"reviewer: {len(findings)} finding(s), {verdict}", file=sys.stderr)
print(json.dumps({"output": {"verdict": verdict, "findings": findings, "files": len(inventory["files"]),
                             "lines": sum(f["lines"] for f in inventory["files"])}}))
