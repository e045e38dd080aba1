#!/usr/bin/env python3
"""A local stand-in for the hosted CAPTCHAs' siteverify APIs (Cloudflare Turnstile, hCaptcha,
Google reCAPTCHA v3), which the tests cannot reach. It speaks their documented protocol: a POST
of `application/x-www-form-urlencoded` with `secret`, `response` and `remoteip`, answered with
JSON `{"success": bool, "score": float, "action": str, "hostname": str, "challenge_ts": str,
"error-codes": [...]}`.

    siteverify.py SECRET LOG      prints its port, then serves; appends each form to LOG

What it answers by `response` (a test's stand-in for the widget's token):
  pass-<score>   success, that score, action "palisade"      (e.g. pass-0.9, pass-0.2)
  wrong-action   success, score 0.9, action "login"
  expired        failure, error-codes ["timeout-or-duplicate"]
  slow           waits 5 s first (a timeout)
  anything else  failure, error-codes ["invalid-input-response"]
A wrong secret fails with ["invalid-input-secret"].
"""
import http.server
import json
import sys
import time
import urllib.parse

SECRET, LOG = sys.argv[1], sys.argv[2]


class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        form = dict(urllib.parse.parse_qsl(self.rfile.read(n).decode()))
        with open(LOG, "a") as f:
            f.write(json.dumps(form) + "\n")
        r = form.get("response", "")
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        out = {"success": False, "error-codes": ["invalid-input-response"], "challenge_ts": now, "hostname": "localhost"}
        if form.get("secret") != SECRET:
            out["error-codes"] = ["invalid-input-secret"]
        elif r.startswith("pass-"):
            out = {"success": True, "score": float(r[5:]), "action": "palisade", "challenge_ts": now, "hostname": "localhost", "error-codes": []}
        elif r == "wrong-action":
            out = {"success": True, "score": 0.9, "action": "login", "challenge_ts": now, "hostname": "localhost", "error-codes": []}
        elif r == "expired":
            out["error-codes"] = ["timeout-or-duplicate"]
        elif r == "slow":
            time.sleep(5)
        body = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
