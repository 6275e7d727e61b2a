"""The engine never imports Django, Celery or calibweb."""

import subprocess
import sys


def test_calibration_imports_no_framework():
    code = (
        "import sys, calibration, calibration.pipeline, calibration.io, calibration.outputs, calibration.testing\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'celery', 'calibweb', 'rest_framework'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
