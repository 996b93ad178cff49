"""An admin's key listing holds every key, every time, on a bucket being
written: nats-py's `KeyValue.keys()` (a watch that decides it is done from
a pending count) answered "no keys" now and then (bus/keystore.key_ids)."""

from __future__ import annotations

import nats

from bus.keystore import KeyStore
from bus.sealing import RecordSeal
from ops.embedded_nats import NatsServer
from schemas import names
from schemas.keys import Role

ROUNDS = 200


async def test_every_created_key_is_listed_every_time(tmp_path):
    with NatsServer(store_dir=tmp_path / "nats") as server:
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            kv = await js.create_key_value(bucket=names.APIKEYS_BUCKET)
            store = KeyStore(kv, RecordSeal(None), js=js)
            # Given keys created one after another, some revoked and one deleted outright
            made: set[str] = set()
            short: list[int] = []
            for i in range(ROUNDS):
                _, rec = await store.create(f"user{i % 7}", [Role.USER])
                made.add(rec.key_id)
                if i % 5 == 0:
                    await store.revoke(rec.key_id)
                if i == 3:
                    await kv.delete(rec.key_id)
                    made.discard(rec.key_id)
                # When the admin lists them after each
                listed = {r.key_id for r in await store.list()}
                if listed != made:
                    short.append(i)
            # Then every list held every key (revoked ones too: they are shown as revoked)
            assert short == [], f"{len(short)} of {ROUNDS} listings were not whole, first at {short[:5]}"
            # And a user's own listing holds only their keys
            assert {r.user_id for r in await store.list("user3")} == {"user3"}
        finally:
            await nc.close()
