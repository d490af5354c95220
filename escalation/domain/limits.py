"""Size bounds that keep every ticket publishable and every page readable by stock clients (SPEC R7, §3).

The numbers are chosen together; docs/delivery.md derives them:

- A session holds at most ``MAX_SESSION_MESSAGES`` messages whose stored content (serialized
  ``MessageContent``) adds up to at most ``MAX_SESSION_CONTENT_BYTES``. With the per-message envelope
  of a transcript entry (ids of at most 64 characters, timestamps, seq) and the ticket's own fields,
  the largest ticket the API can produce stays under ``MAX_TICKET_BYTES``.
- ``MAX_TICKET_BYTES`` is below Kafka's default ``max.message.bytes`` (1,048,588) and the producer's
  ``max_request_size`` (``KAFKA_MAX_REQUEST_BYTES``), which the relay also sets on the topics it creates.
- A list response stops adding items once the next one would pass ``PAGE_BYTE_BUDGET`` (AIP-158 allows
  short pages), well under gRPC's default 4 MiB client receive limit; one item always fits.
"""

from __future__ import annotations

MAX_SESSION_MESSAGES = 500
MAX_SESSION_CONTENT_BYTES = 640 * 1024
MAX_TICKET_BYTES = 1_000_000
KAFKA_MAX_REQUEST_BYTES = 1_048_576
KAFKA_TOPIC_MAX_MESSAGE_BYTES = 1_048_588
PAGE_BYTE_BUDGET = 1024 * 1024
# The most one merchant's shared stream feed (realtime/feed.py) holds of events some of its streams have
# not delivered yet: a few pages, so a burst of large messages is still read once for all the shop's
# streams, while every shop with a stream open costs at most this much (issue 10 §2). Streams further
# behind read their own pages, one page at a time.
FEED_BYTE_BUDGET = 4 * PAGE_BYTE_BUDGET

# Rows one background-worker statement claims or computes (deadline endings and reminders, outbox rows,
# merchants of a warnings check), the default of ESCALATION_DEADLINE_BATCH_SIZE and _OUTBOX_BATCH_SIZE:
# large enough that a burst of 10,000 due sessions is 20 transactions, small enough that one stays well
# under the statement timeout and holds its row locks briefly.
DEFAULT_BATCH_SIZE = 500

# Seconds between a stream hub's reads of the event heads of the merchants it serves (one indexed
# statement for all of them, only while streams are connected): the bound on the delay a lost post-commit
# wake-up can cause (store/signals.py, issue 13 §1). Wake-ups normally arrive one round trip after the
# commit; this only matters when one is lost, so it trades that rare delay against a steady, tiny read.
SIGNAL_POLL_SECONDS = 1.0
