"""Channel adapters: one module per provider. Each verifies and parses the provider's inbound
webhooks into ``InboundMessage`` (handing it to ``contact_center``'s ingest), sends
``OutboundMessage`` through the provider's SDK, and maps delivery statuses. None of them writes
to the database directly.
"""

from __future__ import annotations

from typing import Any

from contact_center.outbound import ChannelSender, Notifier
from contact_center.settings import Settings


def senders() -> dict[str, ChannelSender]:
    """Channel kind -> sender, for the outbound job."""
    from channels import email, meta, slack, telegram, twilio, webchat

    sms = twilio.TwilioSender()
    return {
        "sms": sms,
        "whatsapp": sms,
        "email": email.SmtpSender(),
        "telegram": telegram.TelegramSender(),
        "slack": slack.SlackSender(),
        "messenger": meta.MetaSender(),
        "instagram": meta.MetaSender(),
        "webchat": webchat.WebchatSender(),
    }


def route_handlers(settings: Settings) -> list[Any]:
    """The provider-facing HTTP routes (webhooks), each with its request body limit."""
    from channels import email, meta, slack, telegram, twilio, webchat, webchat_offline

    return [
        *twilio.route_handlers,
        *email.route_handlers,
        *telegram.route_handlers,
        *slack.route_handlers,
        *meta.route_handlers,
        *webchat.route_handlers,
        webchat.upload_route(settings.attachment_max_bytes),
        *webchat_offline.route_handlers,
    ]


def notifiers() -> dict[str, Notifier]:
    """Inbox kind -> notifier, for SLA escalations."""
    from channels import email, slack

    return {"email": email.EmailNotifier(), "slack": slack.SlackNotifier()}
