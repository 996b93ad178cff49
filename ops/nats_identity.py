"""Who may talk to a gpubus nats-server, and how: the service and system
passwords, the auth callout's issuer and curve keys (NatsAuth), and the
certificates it serves TLS with (NatsTls). Kept with the data dir so a
restarted `gpubus up` keeps its identity."""

from __future__ import annotations

import json
import secrets
import ssl
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ops import nats_conf
from ops.private_files import write_private


def _password() -> str:
    """192 random bits that nats-server always reads as a string: the deploy
    config takes the passwords as `$VARIABLE` references, which the server
    parses like config values, so one starting with a digit or '-' could
    read as a number or a date and stop the server (1 run in 6 with
    token_urlsafe)."""
    return "p" + secrets.token_hex(24)


@dataclass(frozen=True)
class NatsAuth:
    """Authorization on: the service identity (user/password, bypasses the
    callout) and the account key whose signature the server accepts on auth
    callout answers. Everyone else is asked about (bus/auth_callout.py)."""

    service_password: str
    issuer_seed: str
    system_password: str
    service_user: str = "gpubus"
    system_user: str = "gpubus-sys"
    xkey_seed: str | None = None  # the callout's curve key: requests and answers are sealed (bus/xkeys.py)

    @classmethod
    def generate(cls) -> NatsAuth:
        from bus import xkeys
        from bus.nats_jwt import new_account_seed

        return cls(
            service_password=_password(),
            issuer_seed=new_account_seed(),
            system_password=_password(),
            xkey_seed=xkeys.new_seed(),
        )

    @classmethod
    def load_or_create(cls, path: Path) -> NatsAuth:
        """Kept in the data dir (0600) so `gpubus up` restarts with the same identity."""
        if path.exists():
            auth = cls(**json.loads(path.read_text()))
            if auth.xkey_seed:
                return auth
            auth = replace(auth, xkey_seed=cls.generate().xkey_seed)  # a data dir from before xkey
        else:
            auth = cls.generate()
        write_private(path, json.dumps(asdict(auth)))
        return auth

    def _xkey_line(self) -> str:
        from bus import xkeys

        return f'    xkey: "{xkeys.public_key(self.xkey_seed)}"\n' if self.xkey_seed else ""

    def config_text(self) -> str:
        from bus import node_permissions
        from bus.nats_jwt import public_key

        accounts = node_permissions.accounts_spec(
            self.service_user, self.service_password, self.system_user, self.system_password
        )
        return (
            nats_conf.block("accounts", accounts) + "system_account: SYS\n"
            "authorization {\n  auth_callout {\n"
            f'    issuer: "{public_key(self.issuer_seed)}"\n'
            f'    auth_users: [ "{self.service_user}", "{self.system_user}" ]\n'
            f"{self._xkey_line()}"
            f"    account: {node_permissions.APP_ACCOUNT}\n  }}\n}}\n"
        )


@dataclass(frozen=True)
class NatsTls:
    """TLS on client connections and cluster routes (files from ops/tls.py
    or the operator). Kept apart from `NatsAuth`: who may connect and how
    the connection is protected change independently."""

    cert_file: Path
    key_file: Path
    ca_file: Path

    def client_block(self) -> str:
        """Handshake first: no plaintext INFO a client could be fooled by,
        and a plaintext client gets nothing (bus/tls.py)."""
        return (
            f'tls {{\n  cert_file: "{self.cert_file}"\n  key_file: "{self.key_file}"\n'
            f'  ca_file: "{self.ca_file}"\n  handshake_first: true\n  timeout: 5\n}}\n'
        )

    def route_block(self) -> str:
        """Routes verify each other against the CA (nats-server requires a
        client certificate on routes when TLS is on)."""
        return (
            f'  tls {{\n    cert_file: "{self.cert_file}"\n    key_file: "{self.key_file}"\n'
            f'    ca_file: "{self.ca_file}"\n    timeout: 5\n  }}\n'
        )

    def context(self) -> ssl.SSLContext:
        """What our own clients verify these servers with."""
        from bus.tls import client_context

        return client_context(ca_file=self.ca_file)
