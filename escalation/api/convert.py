"""Directory rows → API messages (sessions and messages: escalation.services.records)."""

from __future__ import annotations

import asyncpg
from google.protobuf import duration_pb2

from escalation.services.records import timestamp
from escalation.v1 import admin_pb2, merchant_pb2, ops_pb2


def merchant(row: asyncpg.Record) -> ops_pb2.Merchant:
    return ops_pb2.Merchant(
        merchant_id=row["merchant_id"],
        display_name=row["display_name"],
        main_account_id=row["main_account_id"],
        disabled=row["disabled"],
        create_time=timestamp(row["create_time"]),
        update_time=timestamp(row["update_time"]),
    )


def agent(row: asyncpg.Record) -> admin_pb2.Agent:
    return admin_pb2.Agent(
        agent_id=row["agent_id"],
        merchant_id=row["merchant_id"],
        display_name=row["display_name"],
        im_permission=row["im_permission"],
        disabled=row["disabled"],
        capacity=row["capacity"],
        main_account=row["main_account"],
        reception_agent=row["reception_agent"],
        eligible=row["eligible"],
        open_sessions=row["open_sessions"],
        update_time=timestamp(row["update_time"]),
    )


def reception_settings(row: asyncpg.Record) -> admin_pb2.ReceptionSettings:
    return admin_pb2.ReceptionSettings(
        merchant_id=row["merchant_id"],
        reception_agent_ids=list(row["reception_agent_ids"]),
        eligible_agent_ids=list(row["eligible_agent_ids"]),
        reply_timeout=duration_pb2.Duration(seconds=row["reply_timeout_seconds"]),
        update_time=timestamp(row["update_time"]),
    )


def reply_template(row: asyncpg.Record) -> merchant_pb2.ReplyTemplate:
    return merchant_pb2.ReplyTemplate(
        template_id=row["template_id"],
        title=row["title"],
        text=row["body"],
        create_time=timestamp(row["create_time"]),
    )
