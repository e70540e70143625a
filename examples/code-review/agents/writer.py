"""Writer agent: writes the review as Markdown to out/review.md and returns its path."""
import json
import os
import sys

task = json.load(sys.stdin)
review = task["input"]
os.makedirs("out", exist_ok=True)
path = os.path.join("out", "review.md")
with open(path, "w", encoding="utf-8") as f:
    f.write(f"# Code review ({task['run_id']})\n\n")
    f.write(f"{review['files']} Rust files, {review['lines']} lines. Verdict: **{review['verdict']}**.\n\n")
    for finding in review["findings"]:
        f.write(f"- `{finding['path']}`: {finding['issue']}\n")
print(json.dumps({"output": {"verdict": review["verdict"], "findings": len(review["findings"]),
                             "report": os.path.abspath(path)}}))
