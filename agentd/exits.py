"""How ``tanvrit-agentd run`` ends: exit statuses from sysexits.h, which systemd knows by name
(``systemd-analyze exit-status``) and which the unit lists in ``RestartPreventExitStatus`` so
that a condition only a person can fix is not restarted in a loop.

====  ================  ==========================================================
code  name              when
====  ================  ==========================================================
0                       stopped by SIGTERM/SIGINT after a graceful shutdown
67    EX_NOUSER         ``run_as`` names a user that does not exist
69    EX_UNAVAILABLE    something the host must provide is missing (``setpriv``)
73    EX_CANTCREAT      the data directory (or its files) cannot be created
75    EX_TEMPFAIL       another agent is running with the same data directory
77    EX_NOPERM         the coordinator refused the registration token (and, after
                        it refused the agent's own token, registering again); or
                        ``run_as`` needs the agent to run as root
78    EX_CONFIG         the configuration is invalid (file, flags, or a value the
                        host cannot honour, such as more GPUs than it has)
128+n                   a second SIGTERM (143) or SIGINT (130): stopped at once;
                        running jobs are left to the next start to re-adopt
====  ================  ==========================================================
"""

from __future__ import annotations

EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78

# Never restarted by systemd: each needs a person to change something first.
PERMANENT_FAILURES = (EX_NOUSER, EX_UNAVAILABLE, EX_NOPERM, EX_CONFIG)
