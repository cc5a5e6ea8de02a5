"""pyinfra configuration of this project: pyinfra runs this file when it starts in this directory
(``pyinfra inventories/manifest.py deploys/<workflow>.py`` from the repository root).

paramiko's transport thread logs (at ERROR, with a traceback) a connection that pyinfra has already
reported and closed, e.g. a host whose sshd accepts but never answers: at "Disconnecting from hosts"
it prints ``Error reading SSH protocol banner ... File descriptor was closed in another greenlet``.
pyinfra's own one-line message names the host and the failure, so paramiko is kept quiet unless the
operator asks for detail with ``-v`` or ``--debug``.

pyinfra's CLI turns off the writing of compiled modules for the whole process (so that no
``deploy.pyc`` lands beside an operator's deploy files). That also covers this project's ~50 modules,
which every run imports: without their compiled form in ``__pycache__``, each run compiles them again
(about 0.1 s of controller CPU per run). The interpreter's own setting (``-B``,
``PYTHONDONTWRITEBYTECODE``) is restored here; deploy files are read by pyinfra, never compiled to disk.
"""

import logging as _logging
import sys as _sys

from pyinfra import logger as _logger
from pyinfra import state as _state

if not _logger.isEnabledFor(_logging.DEBUG) and not getattr(_state, "print_fact_info", False):
    _logging.getLogger("paramiko").setLevel(_logging.CRITICAL)

_sys.dont_write_bytecode = bool(_sys.flags.dont_write_bytecode)
