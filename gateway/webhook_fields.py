"""The webhook of a submission: the `webhook_url` field (or its alias
`callback_url`, the name other services use) of every submitting endpoint,
else the submitting key's default. Checked at the door like a media URL
(gateway side: syntax and address literals; every address a name resolves
to is checked again at each delivery, bus/webhook_http.py)."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.auth import Principal
from gateway.state import GatewayState
from schemas.errors import InvalidInput
from schemas.url_guard import UrlRefused, check_submitted
from schemas.webhooks import Webhook

FIELD = "webhook_url"
ALIAS = "callback_url"
FIELDS = (FIELD, ALIAS)


def checked_webhook_url(st: GatewayState, url: str, field: str) -> str:
    try:
        return check_submitted(url, allow_private=st.settings.allow_private_urls)
    except UrlRefused as e:
        raise UrlRefused(f"{field}: {e.message.removeprefix('url: ')}") from None


def requested(values: Mapping[str, str | None]) -> tuple[str, str] | None:
    """(url, the field that named it) from `webhook_url` / `callback_url`;
    both, naming different URLs, is a 422."""
    given = {f: v.strip() for f in FIELDS if (v := values.get(f)) is not None and v.strip()}
    if len(set(given.values())) > 1:
        raise InvalidInput(f"{FIELD} and {ALIAS} name the same thing (an alias); give one")
    return next(((url, field) for field, url in given.items()), None)


def job_webhook(st: GatewayState, principal: Principal, values: Mapping[str, str | None]) -> Webhook | None:
    """The job's webhook, or None. Deliveries are signed with the
    submitting key's secret, so a webhook needs a key that has one."""
    asked = requested(values)
    if asked is None and principal.webhook_url is None:
        return None
    url = checked_webhook_url(st, *asked) if asked else principal.webhook_url
    assert url is not None
    if principal.key_id is None:
        raise InvalidInput(f"{FIELD}: webhooks are signed with an API key's secret; submit with an API key")
    if not principal.has_webhook_secret:
        raise InvalidInput(
            f"{FIELD}: key {principal.key_id} has no webhook secret yet; "
            f"POST /api/v1/auth/keys/{principal.key_id}/webhook-secret makes one"
        )
    return Webhook(url=url, key_id=principal.key_id)
