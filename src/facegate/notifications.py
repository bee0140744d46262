"""Notification channels: the webhook an operator configured for an organisation's SNS topic ARN, which a video
job's NotificationChannel names and its completion message is delivered to."""

from __future__ import annotations

import json
from typing import Protocol

NOTIFICATION_CHANNELS = "notification_channels"  # setting: {owner: {SNS topic ARN: webhook URL}}


class Settings(Protocol):
    def get_setting(self, key: str) -> str | None: ...


def notification_channels(settings: Settings) -> dict[str, dict[str, str]]:
    """Every organisation's channels: SNS topic ARN → webhook URL."""
    return json.loads(settings.get_setting(NOTIFICATION_CHANNELS) or "{}")


def notification_url(settings: Settings, owner: str, topic_arn: str) -> str | None:
    return notification_channels(settings).get(owner, {}).get(topic_arn)
