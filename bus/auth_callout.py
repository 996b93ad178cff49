"""NATS auth callout: the server asks us who a connecting client is.

Nodes connect with a secret as their token: a user's API key (role `node`),
or the service identity (`GPUBUS_ADMIN_TOKEN`) for shared-pool nodes. The
server sends an authorization request on `$SYS.REQ.USER.AUTH`; we check the
key in KV `apikeys` and answer with a user JWT, signed by the account key
configured as the callout issuer, whose permissions are exactly the owner's
subjects (bus/node_permissions.py). An unknown, expired or revoked key, or a
key without the node role, is refused, so NATS itself refuses the connection.

Revocation: we remember which connections (server id, client id) each key
was granted; when a key is revoked, every gateway hears it on a core subject
and asks the servers (system account `KICK`) to disconnect those
connections. The node reconnects with the same key, is refused, and exits.
The user JWT expires only with its key: nats-py closes a connection for
good, without reconnecting, when the server reports an expired
authentication, so a short-lived identity would take healthy nodes down
with it; for a key that expires that is exactly right, and the server itself
cuts the connection at the key's `expires_at` (the JWT's `exp`).

Why callout rather than user credentials signed ahead of time: nodes need
only the gateway URL and their API key (nothing to mint, copy or rotate),
and revocation is checked against the same KV record the REST API uses.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus import nats_jwt, node_permissions, xkeys
from bus.keystore import KeyStore
from schemas.errors import GpubusError, Unauthorized
from schemas.keys import KEY_PREFIX, Role

log = logging.getLogger("gpubus.bus.auth_callout")

AUTH_SUBJECT = "$SYS.REQ.USER.AUTH"
REVOKED_SUBJECT = "gpubus.ctl.key_revoked"  # core NATS, among gateways (service identity)
KICK_SUBJECT = "$SYS.REQ.SERVER.{server_id}.KICK"
QUEUE = "gpubus-auth"


class AuthCallout:
    def __init__(
        self,
        nc: NatsClient,
        keys: KeyStore,
        *,
        issuer_seed: str,
        admin_token: Callable[[], str | None],
        system_nc: NatsClient | None = None,
        xkey_seed: str | None = None,
    ) -> None:
        self._nc = nc
        self._keys = keys
        self._seed = issuer_seed
        self._issuer = nats_jwt.public_key(issuer_seed)
        self._admin_token = admin_token
        self._system_nc = system_nc
        self._xkey_seed = xkey_seed  # set = the server seals requests to us and wants sealed answers
        self._granted: dict[str, set[tuple[str, int]]] = {}  # key id -> (server id, client id)
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        """A queue group: with several gateways, one answers each request;
        every gateway hears revocations (it may hold the grant)."""
        self._subs = [
            await self._nc.subscribe(AUTH_SUBJECT, queue=QUEUE, cb=self._on_request),
            await self._nc.subscribe(REVOKED_SUBJECT, cb=self._on_revoked),
        ]

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()

    async def revoked(self, key_id: str) -> None:
        """Tell every gateway (this one included) to cut off the key's nodes."""
        await self._nc.publish(REVOKED_SUBJECT, key_id.encode())

    async def _on_revoked(self, msg: Msg) -> None:
        key_id = msg.data.decode(errors="replace")
        for server_id, cid in self._granted.pop(key_id, set()):
            if self._system_nc is None:
                log.warning("cannot disconnect revoked key %s's node: no system account configured", key_id)
                return
            try:
                await self._system_nc.request(
                    KICK_SUBJECT.format(server_id=server_id), json.dumps({"cid": cid}).encode(), timeout=2
                )
                log.info("disconnected client %s on %s (key %s revoked)", cid, server_id, key_id)
            except Exception as e:  # it may have gone already
                log.warning("could not disconnect client %s of revoked key %s: %s", cid, key_id, e)

    async def _on_request(self, msg: Msg) -> None:
        try:
            server_xkey = self._server_xkey(msg)
            req = nats_jwt.decode_verified(self._unseal(msg.data, server_xkey).decode())
        except (Unauthorized, UnicodeDecodeError) as e:
            log.warning("ignoring unverifiable auth request: %s", e)
            return
        data = req.get("nats", {})
        user_nkey, server_id = data.get("user_nkey", ""), data.get("server_id", {}).get("id", "")
        opts = data.get("connect_opts", {})
        secret = opts.get("auth_token") or opts.get("pass") or ""
        try:
            name, perms, key_id = await self._permissions_for(secret)
            reply = self._grant(user_nkey, server_id, name, perms, expires=await self._expiry(key_id))
            cid = data.get("client_info", {}).get("id")
            if key_id and cid is not None:
                self._granted.setdefault(key_id, set()).add((server_id, int(cid)))
            log.info("nats identity granted to %s (%s)", name, opts.get("name") or "?")
        except GpubusError as e:
            reply = self._refuse(user_nkey, server_id, e.message)
            log.warning("nats identity refused (%s): %s", opts.get("name") or "?", e.message)
        await msg.respond(self._seal(reply.encode(), server_xkey))

    def _server_xkey(self, msg: Msg) -> str | None:
        """The server's one-time curve key; with xkey on, a request without
        one was not sealed by the server and is not answered."""
        if self._xkey_seed is None:
            return None
        key = (msg.headers or {}).get(xkeys.XKEY_HEADER)
        if not key:
            raise xkeys.XkeyError("auth request not sealed (no server xkey)")
        return key

    def _unseal(self, data: bytes, server_xkey: str | None) -> bytes:
        if self._xkey_seed is None or server_xkey is None:
            return data
        return xkeys.open_sealed(data, seed=self._xkey_seed, sender=server_xkey)

    def _seal(self, reply: bytes, server_xkey: str | None) -> bytes:
        if self._xkey_seed is None or server_xkey is None:
            return reply
        return xkeys.seal(reply, seed=self._xkey_seed, recipient=server_xkey)

    async def _permissions_for(self, secret: str) -> tuple[str, dict[str, list[str]] | None, str | None]:
        """(name, allow lists, key id); None lists = the service identity's full access."""
        admin = self._admin_token()
        if admin and not secret.startswith(KEY_PREFIX):
            if hmac.compare_digest(secret.encode(), admin.encode()):
                return "gpubus-service", None, None
            raise Unauthorized("invalid token")
        rec = await self._keys.authenticate(secret)
        if Role.NODE not in rec.roles:
            raise Unauthorized(f"key {rec.key_id} has no node role")
        return f"{rec.user_id}/{rec.key_id}", node_permissions.for_node(rec.user_id), rec.key_id

    async def _expiry(self, key_id: str | None) -> int | None:
        """When the key's NATS identity must end: revocation kicks a live
        connection, but nothing else would end one whose key just expired
        (review F14). Whole seconds, rounded up: the JWT's `exp` is an int."""
        if key_id is None:
            return None
        expires_at = (await self._keys.get(key_id)).expires_at
        return None if expires_at is None else math.ceil(expires_at)

    def _grant(
        self,
        user_nkey: str,
        server_id: str,
        name: str,
        perms: dict[str, list[str]] | None,
        *,
        expires: int | None = None,
    ) -> str:
        now = int(time.time())
        nats: dict[str, Any] = {"type": "user", "version": 2}
        account = node_permissions.APP_ACCOUNT  # the service identity: trusted, full access
        if perms is not None:
            # An untrusted node: its own account, walled off from JetStream
            # and the trusted state (bus/node_permissions.py says why).
            account = node_permissions.NODE_ACCOUNT
            nats |= {"pub": {"allow": perms["pub"]}, "sub": {"allow": perms["sub"]}}
        claims = {"iat": now, "iss": self._issuer, "sub": user_nkey, "name": name, "aud": account, "nats": nats}
        if expires is not None:
            claims["exp"] = expires
        user_jwt = nats_jwt.encode(claims, self._seed)
        return self._response(user_nkey, server_id, {"jwt": user_jwt})

    def _refuse(self, user_nkey: str, server_id: str, why: str) -> str:
        return self._response(user_nkey, server_id, {"error": why})

    def _response(self, user_nkey: str, server_id: str, body: dict[str, Any]) -> str:
        return nats_jwt.encode(
            {
                "iat": int(time.time()),
                "iss": self._issuer,
                "sub": user_nkey,
                "aud": server_id,
                "nats": {"type": "authorization_response", "version": 2, **body},
            },
            self._seed,
        )
