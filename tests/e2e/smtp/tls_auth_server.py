"""An SMTP server like a mail provider's submission port, for tests/smtp_tls.rs.

It requires STARTTLS before AUTH and AUTH (PLAIN or LOGIN) before MAIL, with
one user and password; its certificate is self-signed, made at start with the
openssl CLI. It prints JSON lines on stdout: first {"event": "ready", "port"},
then one {"event": "auth", ...} per login attempt and one
{"event": "message", ...} per email taken. The password is never printed.
It stops when its stdin closes, so it never outlives the test that started it.

    python tls_auth_server.py --user shop --password secret
"""

import argparse
import asyncio
import email.parser
import email.policy
import json
import os
import ssl
import subprocess
import sys
import tempfile
import threading

try:
    from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
except ImportError as error:
    sys.exit(
        f"aiosmtpd is not installed for {sys.executable} ({error}): run ./scripts/test.sh, "
        "which installs it into .run/venv"
    )


def emit(event):
    print(json.dumps(event), flush=True)


def self_signed_tls(directory):
    """A server context with a fresh self-signed certificate for localhost."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-keyout", key, "-out", cert],
            check=True, capture_output=True,
        )
    except FileNotFoundError:
        sys.exit("the openssl command is not installed: run ./scripts/test.sh, which installs it")
    except subprocess.CalledProcessError as error:
        sys.exit(f"openssl could not make a certificate: {error.stderr.decode(errors='replace')}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


class Authenticator:
    def __init__(self, user, password):
        self.user, self.password = user, password

    def __call__(self, server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == self.user.encode()
            and auth_data.password == self.password.encode()
        )
        login = auth_data.login.decode(errors="replace") if isinstance(auth_data, LoginPassword) else None
        emit({"event": "auth", "mechanism": mechanism, "login": login, "success": ok,
              "tls": session.ssl is not None})
        # handled=False: aiosmtpd answers a failure itself, with 535 5.7.8.
        return AuthResult(success=ok, handled=False, auth_data=auth_data)


class Recorder:
    async def handle_DATA(self, server, session, envelope):
        message = email.parser.BytesParser(policy=email.policy.default).parsebytes(envelope.content)
        emit({
            "event": "message",
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "subject": message["subject"],
            "tls": session.ssl is not None,
            "authenticated": bool(session.authenticated),
            "login": getattr(session.auth_data, "login", b"").decode(errors="replace"),
        })
        return "250 2.0.0 OK"


async def serve(args, tls_context):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            Recorder(),
            hostname="localhost",
            tls_context=tls_context,
            require_starttls=True,
            auth_required=True,
            auth_require_tls=True,
            authenticator=Authenticator(args.user, args.password),
            loop=loop,
        ),
        host="127.0.0.1",
        port=args.port,
    )
    emit({"event": "ready", "port": server.sockets[0].getsockname()[1]})
    stdin_closed = asyncio.Event()
    # Reading stdin blocks, so it waits on a thread of its own.
    threading.Thread(
        target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stdin_closed.set)),
        daemon=True,
    ).start()
    await stdin_closed.wait()
    server.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free one")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        tls_context = self_signed_tls(directory)
        asyncio.run(serve(args, tls_context))


if __name__ == "__main__":
    main()
