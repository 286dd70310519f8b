"""Peer WebSocket servers that wsup is measured against.

Each module in this package is a standalone script (it imports nothing from
``bench``) so that it can be run by hand exactly as the harness runs it::

    python bench/servers/websockets_server.py --port 9001 --compression off

Every peer server implements the same contract, which the wsup bench app
implements too:

* ``/echo`` sends every message back with the same type (text stays text,
  binary stays binary).
* ``/fanout``: every connection is a subscriber; a message received on any
  ``/fanout`` connection (the publisher) is broadcast to every ``/fanout``
  connection, the publisher included, with the fastest non-blocking send the
  library offers.
* Keepalive pings every ``--ping-interval`` seconds (20 by default, the
  ``websockets`` default), so idle connections cost what they cost in production.
* ``--compression on|off`` enables or disables permessage-deflate; a server
  that cannot compress refuses ``on`` with exit status 2.
* On SIGTERM a server that supports graceful shutdown closes every connection
  with 1001 (going away) and exits; the others just exit.
* ``--lag-file PATH`` runs an event-loop lag probe (``lagprobe.py``, in this
  directory, which the scripts import as a sibling) that writes a sample every
  50 ms, for the storm scenario.
* The listen backlog is 1024 so that bursts of connects are not dropped.
* The server prints one line with its settings to standard error when it
  listens.
"""
