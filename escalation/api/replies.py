"""A merchant reply, the one path of unary ``Reply`` and a reply frame inside ``Connect`` (SPEC R4, R7).

Its own module so api/merchant.py (unary) and api/streams.py (in-stream) both call it without importing
each other (issue 12 §1). What is API work stays here: the per-sender reply rate (api/limits.py) and
turning the request into a checked message; the use case itself is services.sessions.add_message.
"""

from __future__ import annotations

import asyncpg

from escalation.api import limits
from escalation.api import session_requests as req
from escalation.api.interceptors import current_identity
from escalation.domain.session import Kind, Sender
from escalation.domain.validation import Violations
from escalation.services import sessions
from escalation.services.sessions import NewMessage, SessionPolicy
from escalation.v1 import merchant_pb2


async def reply(pool: asyncpg.Pool, policy: SessionPolicy, request: merchant_pb2.ReplyRequest) -> asyncpg.Record:
    """A merchant reply (unary, or a Connect frame): text, image, emoji, or a quick-reply template.

    Charged to the sender's reply rate first (api/limits.py, SPEC §3 "Limits"): a refused reply writes
    nothing. Returns the messages row with ``message_pb`` (new, or the original on a retried client_msg_id,
    SPEC R4; records.sent_message() reads it). Raises
    RateLimited, InvalidArgument, and whatever services.sessions.add_message raises.
    """
    await limits.take_reply(request.session_id, request.client_msg_id)
    check = Violations()
    sid = req.session_id(check, request.session_id)
    msg_id = req.client_msg_id(check, request.client_msg_id)
    has_content, template_id = request.HasField("content"), request.template_id
    message: NewMessage | None = None
    if has_content == bool(template_id):
        check.add("content", "set exactly one of content and template_id")
        check.add("template_id", "set exactly one of content and template_id")
    elif template_id:
        check.identifier("template_id", template_id)
        message = NewMessage(Kind.TEXT, b"", msg_id, template_id)
    else:
        message = req.new_message(check, "content", request.content, Sender.MERCHANT, msg_id)
    check.raise_if_any()
    assert message is not None
    return await sessions.add_message(pool, current_identity(), sid, message, policy)
