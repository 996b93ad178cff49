"""What a user's node may do on NATS, and the account wall around it.

User nodes are untrusted remote machines. They live in their own account,
`NODES`, which has no JetStream and no state of its own. The trusted account
`APP` (JetStream, the `jobs`/`apikeys`/`nodes` buckets, every stream) exports
exactly the services and streams a node needs, and `NODES` imports them
(`BRIDGE`). Inside `NODES`, each node's user JWT (issued by auth callout)
allows only its owner's subjects (`for_node`).

Why an account and not only permissions: NATS checks a publish permission on
the subject, never on the reply subject, and the JetStream API answers on
whatever reply subject a request carries. In one shared account a node could
therefore have the server publish bytes it chose onto `$KV.apikeys.…` or
`events.<other>.…` (security review of 2026-12-01, F1). Across a service
import, the server sends the request on with a reply subject of its own
making (`_R_.…`) and routes the answer back into the importing account, so a
forged reply subject can only land in `NODES`, where nothing stores it and a
response never travels on through another import (checked on nats-server
2.15.1; see docs/SECURITY.md, "Facts checked").

The JetStream API is imported under `NODE_JS_API` instead of `$JS.API`: an
account without JetStream answers `$JS.API.>` itself with "JetStream not
enabled for account" (10039), so nodes use that prefix (nats-py's
`jetstream(prefix=…)`), which the bootstrap answer names.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas import names
from schemas.names import Lane

APP_ACCOUNT = "APP"
NODE_ACCOUNT = "NODES"
JS_API = "$JS.API"
NODE_JS_API = "gpubus.js"


@dataclass(frozen=True)
class Bridge:
    """One export of `APP`, imported by `NODES`. `api` subjects are JetStream
    API calls, seen in `NODES` under NODE_JS_API; `many` answers are streams
    of messages (a pull request, a batched direct get)."""

    subject: str
    kind: str = "service"  # or "stream": published by APP, delivered to NODES
    api: bool = False
    many: bool = False

    @property
    def app_subject(self) -> str:
        return f"{JS_API}.{self.subject}" if self.api else self.subject

    @property
    def node_subject(self) -> str:
        return f"{NODE_JS_API}.{self.subject}" if self.api else self.subject


# Everything a node can ever reach in APP. Per-owner narrowing is for_node's
# job; this list is the account-level ceiling no user JWT can exceed.
BRIDGE: tuple[Bridge, ...] = (
    Bridge(f"CONSUMER.MSG.NEXT.{names.JOBS_STREAM}.*", api=True, many=True),
    Bridge(f"CONSUMER.INFO.{names.JOBS_STREAM}.*", api=True),
    Bridge(f"$JS.ACK.{names.JOBS_STREAM}.>"),
    Bridge(f"$KV.{names.NODES_BUCKET}.>"),
    Bridge(names.EVENTS_SUBJECTS),
    Bridge(names.STARTS_SUBJECTS),  # start claims of GPU attempts (bus/start_claims.py)
    Bridge("STREAM.INFO.*", api=True),  # KV_nodes, and files-<owner> (made per owner)
    Bridge("STREAM.MSG.GET.*", api=True),
    Bridge("STREAM.PURGE.*", api=True),
    Bridge("DIRECT.GET.>", api=True, many=True),  # by sequence, or last by subject
    Bridge("$O.>"),
    Bridge(names.cancel_subject("*"), kind="stream"),
    Bridge(names.QUEUED_SUBJECTS, kind="stream"),  # doorbells of stored jobs (bus/intake.py)
)


def inbox_prefix(owner: str) -> str:
    """Replies (JetStream API answers, pulled messages) come here; only this
    owner's connections may subscribe to it."""
    return f"_INBOX_{owner}"


def node_api(subject: str) -> str:
    """A JetStream API subject (without `$JS.API.`) as a user node sends it."""
    return f"{NODE_JS_API}.{subject}"


def for_node(owner: str) -> dict[str, list[str]]:
    """Allow lists for a node of `owner`, on either of its lanes, in NODES."""
    bucket = names.files_bucket(owner)
    files = names.object_stream(bucket)
    pub: list[str] = [
        f"events.{owner}.>",
        f"starts.{owner}.>",
        f"$KV.{names.NODES_BUCKET}.{owner}.*.*",
        node_api(f"STREAM.INFO.{names.kv_stream(names.NODES_BUCKET)}"),
        f"$O.{bucket}.>",
        node_api(f"STREAM.INFO.{files}"),
        node_api(f"STREAM.MSG.GET.{files}"),
        node_api(f"STREAM.PURGE.{files}"),
        node_api(f"DIRECT.GET.{files}"),
        node_api(f"DIRECT.GET.{files}.>"),
    ]
    for lane in Lane:
        for queue in names.own_queues(owner, lane):  # the lane at each priority
            consumer = queue.consumer
            pub += [
                node_api(f"CONSUMER.INFO.{names.JOBS_STREAM}.{consumer}"),
                node_api(f"CONSUMER.MSG.NEXT.{names.JOBS_STREAM}.{consumer}"),
                f"$JS.ACK.{names.JOBS_STREAM}.{consumer}.>",
            ]
    sub = [f"{inbox_prefix(owner)}.>", names.cancel_subject(owner)]
    sub += [names.queued_filter(owner, lane) for lane in Lane]
    return {"pub": pub, "sub": sub}


def _export(b: Bridge) -> dict[str, str]:
    if b.kind == "stream":
        return {"stream": b.app_subject}
    return {"service": b.app_subject, **({"response_type": "stream"} if b.many else {})}


def _import(b: Bridge) -> dict[str, object]:
    imp: dict[str, object] = {b.kind: {"account": APP_ACCOUNT, "subject": b.app_subject}}
    if b.node_subject != b.app_subject:
        imp["to"] = b.node_subject
    return imp


def accounts_spec(
    service_user: str, service_password: str, system_user: str, system_password: str
) -> dict[str, dict[str, object]]:
    """The `accounts` block every gpubus nats-server runs with, as data: the
    embedded server renders it with real passwords, the deploy configs
    (compose, the Helm values) with `$VARIABLE` references, and a test
    checks each deploy config against it (ops/nats_conf.py renders)."""
    return {
        APP_ACCOUNT: {
            "jetstream": "enabled",
            "users": [{"user": service_user, "password": service_password}],
            "exports": [_export(b) for b in BRIDGE],
        },
        NODE_ACCOUNT: {"imports": [_import(b) for b in BRIDGE]},
        "SYS": {"users": [{"user": system_user, "password": system_password}]},
    }
