"""The README's multiprocessing pattern ("Many processes") runs as written."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_multiprocessing_pattern_runs(tmp_path):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme[readme.index("## Many processes"):]
    section = section[:section.index("\n## ", 5)]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[1]
    assert "ProcessPoolExecutor" in code and "shared=True" in code
    code = code.replace("import concurrent.futures, logstore, queue",
                        "import concurrent.futures, logstore, queue\n"
                        "def handle(job):\n    assert isinstance(job['job'], int)\n", 1)
    code = code.replace("range(10_000)", "range(300)")
    script = tmp_path / "example.py"
    script.write_text(code)
    r = subprocess.run([sys.executable, str(script)], cwd=str(tmp_path), capture_output=True,
                       text=True, timeout=240, env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "300"  # every job handled exactly once across the workers
