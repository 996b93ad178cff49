"""What a user's node may do on NATS: its owner's queues, files, events,
registry keys and a private inbox; nothing else.

These become the publish/subscribe allow lists of the user JWT that auth
callout issues for a node key. NATS denies everything not listed, so a node
holding user A's key gets a permissions violation on anything of user B.
"""

from __future__ import annotations

from schemas import names
from schemas.names import Lane


def inbox_prefix(owner: str) -> str:
    """Replies (JetStream API answers, pulled messages) come here; only this
    owner's connections may subscribe to it."""
    return f"_INBOX_{owner}"


def for_node(owner: str) -> dict[str, list[str]]:
    """Allow lists for a node of `owner`, on either of its lanes."""
    files = names.object_stream(names.files_bucket(owner))
    nodes_kv = names.kv_stream(names.NODES_BUCKET)
    pub: list[str] = [
        f"events.{owner}.>",
        f"$KV.{names.NODES_BUCKET}.{owner}.*.*",
        f"$JS.API.STREAM.INFO.{nodes_kv}",
        f"$O.{names.files_bucket(owner)}.>",
        f"$JS.API.STREAM.INFO.{files}",
        f"$JS.API.STREAM.MSG.GET.{files}",
        f"$JS.API.DIRECT.GET.{files}.>",
        f"$JS.API.STREAM.PURGE.{files}",
        f"$JS.API.CONSUMER.CREATE.{files}",
        f"$JS.API.CONSUMER.CREATE.{files}.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{files}.>",
        f"$JS.API.CONSUMER.DELETE.{files}.>",
        f"$JS.FC.{files}.>",  # flow-control replies of the ordered consumer reading a file
    ]
    for lane in Lane:
        consumer = names.consumer_name(owner, lane)
        pub += [
            f"$JS.API.CONSUMER.INFO.{names.JOBS_STREAM}.{consumer}",
            f"$JS.API.CONSUMER.MSG.NEXT.{names.JOBS_STREAM}.{consumer}",
            f"$JS.ACK.{names.JOBS_STREAM}.{consumer}.>",
        ]
    sub = [f"{inbox_prefix(owner)}.>", names.cancel_subject(owner)]
    return {"pub": pub, "sub": sub}
