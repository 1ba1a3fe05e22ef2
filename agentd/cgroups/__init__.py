"""Per-job control groups behind one small interface (``base.CgroupManager``), with a
backend per kernel interface: ``v2`` (the unified hierarchy, in the subtree systemd delegates
to the agent), ``v1`` (one mount per controller) and ``none`` (no isolation; process groups
and psutil instead). ``detect.detect_cgroups`` picks one at start.

Every backend reaches the filesystem through a ``CgroupFs`` editor rooted at a directory, so
tests point it at a temporary tree; no logic here names ``/sys/fs/cgroup``.
"""
