#!/usr/bin/env python3
"""A real Web Bot Auth signer for the gateway tests, built on the PyPI package
`http-message-signatures` (RFC 9421), installed by scripts/test.sh.

  wba_sign.py key DIR                 makes an Ed25519 key: DIR/agent.jwk (private), DIR/agent.jwks
  wba_sign.py send DIR URL [SENT_PATH] signs GET URL as the agent (Signature-Agent sig1, covering
                                       @authority, @path and the member) and sends it, to SENT_PATH
                                       instead of URL's path when given (a tampered request);
                                       prints the status code. WBA_AGENT overrides the agent URI.
  wba_sign.py serve DIR PORT CERT KEY [unsigned]
                                      serves DIR/agent.jwks as the agent's key directory over
                                      HTTPS on 127.0.0.1:PORT, the response signed by the agent
                                      key (tag http-message-signatures-directory, covering
                                      "@authority";req) unless `unsigned`; prints "ready", and
                                      appends each path served to DIR/hits-PORT.log
"""
import base64, datetime, hashlib, json, os, sys, urllib.error, urllib.request
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from http_message_signatures import HTTPMessageSigner, MappingKeyResolver, algorithms

AGENT = "https://agent.palisade-test.example"


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def thumbprint(x):
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"), sort_keys=True)
    return b64u(hashlib.sha256(canonical.encode()).digest())


class Headers:
    def __init__(self, items):
        self.f = list(items)

    def items(self):
        return list(self.f)

    def __iter__(self):
        return iter(dict.fromkeys(n for n, _ in self.f))

    def __contains__(self, name):
        return any(n.lower() == name.lower() for n, _ in self.f)

    def __getitem__(self, name):
        vals = [v for n, v in self.f if n.lower() == name.lower()]
        if not vals:
            raise KeyError(name)
        return ", ".join(vals)

    def __setitem__(self, name, value):
        self.f = [x for x in self.f if x[0].lower() != name.lower()] + [(name, value)]

    def __delitem__(self, name):
        self.f = [x for x in self.f if x[0].lower() != name.lower()]


class Request:
    def __init__(self, method, url, headers):
        self.method, self.url, self.headers = method, url, Headers(headers)


def make_key(d):
    priv = ed25519.Ed25519PrivateKey.generate()
    raw = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    seed = priv.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    x = b64u(raw)
    json.dump({"kty": "OKP", "crv": "Ed25519", "x": x, "d": b64u(seed)}, open(os.path.join(d, "agent.jwk"), "w"))
    json.dump({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": thumbprint(x)}]}, open(os.path.join(d, "agent.jwks"), "w"))


def send(d, url, sent_path=None):
    jwk = json.load(open(os.path.join(d, "agent.jwk")))
    priv = ed25519.Ed25519PrivateKey.from_private_bytes(base64.urlsafe_b64decode(jwk["d"] + "=="))
    keyid = thumbprint(jwk["x"])
    resolver = MappingKeyResolver(public_keys={keyid: priv.public_key()}, private_keys={keyid: priv})
    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=resolver)
    now = datetime.datetime.now(datetime.timezone.utc)
    agent = os.environ.get("WBA_AGENT", AGENT)
    req = Request("GET", url, [("User-Agent", "Python-urllib/3"), ("Signature-Agent", f'sig1="{agent}"')])
    signer.sign(req, key_id=keyid, created=now, expires=now + datetime.timedelta(minutes=5),
                nonce=base64.b64encode(os.urandom(32)).decode(), label="sig1", tag="web-bot-auth",
                covered_component_ids=("@authority", "@path", '"signature-agent";key="sig1"'))
    u = urlsplit(url)
    target = f"{u.scheme}://{u.netloc}{sent_path or u.path}"
    out = urllib.request.Request(target, headers=dict(req.headers.items()))
    try:
        status = urllib.request.urlopen(out, timeout=10).status
    except urllib.error.HTTPError as e:
        status = e.code
    print(status)


def serve(d, port, cert, key, unsigned):
    import http.server, ssl, time
    jwk = json.load(open(os.path.join(d, "agent.jwk")))
    priv = ed25519.Ed25519PrivateKey.from_private_bytes(base64.urlsafe_b64decode(jwk["d"] + "=="))
    keyid = thumbprint(jwk["x"])
    body = open(os.path.join(d, "agent.jwks"), "rb").read()
    hits = os.path.join(d, f"hits-{port}.log")

    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            with open(hits, "a") as f:
                f.write(self.path + "\n")
            if self.path != "/.well-known/http-message-signatures-directory":
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/http-message-signatures-directory+json")
            self.send_header("Cache-Control", "max-age=86400")
            self.send_header("Content-Length", str(len(body)))
            if not unsigned:
                # RFC 9421 §2.5 base over the request's authority (the `req` flag, §2.4).
                created = int(time.time())
                params = (f'("@authority";req);created={created};expires={created + 3600};'
                          f'keyid="{keyid}";alg="ed25519";tag="http-message-signatures-directory"')
                base = f'"@authority";req: {self.headers["Host"].lower()}\n"@signature-params": {params}'
                sig = base64.b64encode(priv.sign(base.encode())).decode()
                self.send_header("Signature-Input", f"binding0={params}")
                self.send_header("Signature", f"binding0=:{sig}:")
            self.end_headers()
            self.wfile.write(body)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), H)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print("ready", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    if sys.argv[1] == "key":
        make_key(sys.argv[2])
    elif sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], len(sys.argv) > 6 and sys.argv[6] == "unsigned")
    else:
        send(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
