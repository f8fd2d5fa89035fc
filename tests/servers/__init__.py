"""Real SMTP servers for tests and benchmarks, started on loopback and stopped after.

- :mod:`tests.servers.ports`: free loopback ports and waiting for a listener.
- :mod:`tests.servers.postfix`: a throwaway Postfix instance that relays everything
  to one next hop.
- :mod:`tests.servers.smtpsink`: Postfix's ``smtp-sink``, optionally dumping each
  message to a directory so a test can count and read what arrived.
"""

from .ports import free_port, wait_for_port
from .postfix import PostfixError, PostfixInstance
from .smtpsink import SinkMessage, SmtpSink

__all__ = [
    "PostfixError",
    "PostfixInstance",
    "SinkMessage",
    "SmtpSink",
    "free_port",
    "wait_for_port",
]
