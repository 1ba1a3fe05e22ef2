"""Prints this process's signal dispositions (for ``tests/test_procs.py``): the kernel's mask of
ignored signals, and what Python has for SIGINT."""

import signal
from pathlib import Path

status = dict(line.split(":\t", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":\t" in line)
print(int(status["SigIgn"].strip(), 16), signal.getsignal(signal.SIGINT) is signal.default_int_handler)
