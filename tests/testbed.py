"""The test bed lives in the package (devbox/testbed.py) so `make demo` can use it too."""
from devbox.testbed import *  # noqa: F401,F403
from devbox.testbed import FIXTURES, UNREACHABLE  # noqa: F401
