"""Test scaffolding: a loopback stand-in for the clouds' token services, for the unmodified SDKs.

One HTTPS server answers as
  - AWS STS:  POST /  Action=AssumeRoleWithWebIdentity  -> AssumeRoleWithWebIdentityResponse XML
  - Entra ID: POST /<tenant>/oauth2/v2.0/token  (client_assertion)  -> token JSON
  - GCP STS:  POST /v1/token  (RFC 8693 token exchange)  -> token JSON
Like the real services, it trusts the vouch trust domain as an OIDC identity provider: it reads
<issuer>/.well-known/openid-configuration, takes the keys from its jwks_uri, and accepts a token
only if its signature verifies with them, `iss` is the issuer, `aud` is the audience configured
for that cloud and `sub` the expected SPIFFE ID (the role trust policy / federated credential /
attribute condition). Every decision is appended to --events as a JSON line; it never logs a token.

Usage: cloud_standin.py --issuer URL --subject SPIFFE_ID --cert PEM --key PEM --port-file PATH
       --events PATH --aws-audience A --azure-audience A --azure-client-id C --gcp-token-audience A
       --gcp-audience A
"""

import argparse
import base64
import json
import os
import ssl
import threading
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt  # PyJWT (with cryptography), installed with azure-identity's msal

ARGS = None
JWKS = None
LOCK = threading.Lock()


def event(**fields):
    with LOCK, open(ARGS.events, "a", encoding="utf-8") as f:
        f.write(json.dumps(fields) + "\n")


def discover(issuer):
    """The JWKS client for the issuer's keys, found by OIDC discovery (as the clouds do)."""
    with urllib.request.urlopen(issuer + "/.well-known/openid-configuration", timeout=10) as r:
        doc = json.load(r)
    if doc.get("issuer") != issuer:
        raise SystemExit(f"discovery names issuer {doc.get('issuer')!r}, not {issuer!r}")
    return jwt.PyJWKClient(doc["jwks_uri"], cache_keys=False, timeout=10)


def verify(token, audience):
    """The token's claims if vouch signed it for `audience` and the expected subject; else raises."""
    key = JWKS.get_signing_key_from_jwt(token)
    # Signature, issuer and audience first, so a refusal names the audience even if the token has
    # also expired meanwhile; then everything, expiry included.
    jwt.decode(token, key.key, algorithms=["ES256", "ES384", "RS256"], audience=audience, issuer=ARGS.issuer,
               options={"verify_exp": False})
    claims = jwt.decode(
        token,
        key.key,
        algorithms=["ES256", "ES384", "RS256"],
        audience=audience,
        issuer=ARGS.issuer,
        options={"require": ["exp", "iat", "sub", "aud", "iss"]},
        leeway=30,  # clock skew, as the clouds allow some; keeps a loaded test machine from flaking
    )
    if claims["sub"] != ARGS.subject:
        raise jwt.InvalidTokenError(f"subject {claims['sub']} is not {ARGS.subject}")
    return claims


def issued(prefix):
    return prefix + base64.b32encode(os.urandom(10)).decode().rstrip("=")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # no request lines (they would hold no token, but keep quiet)
        pass

    def answer(self, status, body, content_type):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def form(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > 65536:
            raise ValueError("request too large")
        return dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))

    def do_GET(self):
        # Entra ID tenant discovery, should a client ask for it.
        parts = self.path.strip("/").split("/")
        if len(parts) >= 2 and parts[-1] == "openid-configuration":
            base = f"https://127.0.0.1:{self.server.server_address[1]}/{parts[0]}"
            doc = {
                "issuer": base + "/v2.0",
                "token_endpoint": base + "/oauth2/v2.0/token",
                "authorization_endpoint": base + "/oauth2/v2.0/authorize",
            }
            return self.answer(200, json.dumps(doc), "application/json")
        self.answer(404, "{}", "application/json")

    def do_POST(self):
        try:
            form = self.form()
        except ValueError as e:
            return self.answer(400, json.dumps({"error": str(e)}), "application/json")
        if self.path == "/" and form.get("Action") == "AssumeRoleWithWebIdentity":
            return self.aws(form)
        if self.path.endswith("/oauth2/v2.0/token"):
            return self.azure(form)
        if self.path == "/v1/token":
            return self.gcp(form)
        self.answer(404, "{}", "application/json")

    def aws(self, form):
        try:
            claims = verify(form.get("WebIdentityToken", ""), ARGS.aws_audience)
        except Exception as e:  # every refusal is the cloud's InvalidIdentityToken
            event(cloud="aws", accepted=False, reason=f"{type(e).__name__}: {e}")
            xml = (
                '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
                "<Code>InvalidIdentityToken</Code><Message>Incorrect token audience or signature</Message>"
                "</Error><RequestId>standin</RequestId></ErrorResponse>"
            )
            return self.answer(400, xml, "text/xml")
        key_id = issued("ASIA")
        event(cloud="aws", accepted=True, sub=claims["sub"], aud=claims["aud"], role=form.get("RoleArn"), issued=key_id)
        role = form.get("RoleArn", "")
        session = form.get("RoleSessionName", "s")
        xml = f"""<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>{claims["sub"]}</SubjectFromWebIdentityToken>
    <Audience>{ARGS.aws_audience}</Audience>
    <AssumedRoleUser>
      <Arn>{role.replace(":iam:", ":sts:").replace(":role/", ":assumed-role/")}/{session}</Arn>
      <AssumedRoleId>AROASTANDIN:{session}</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <SessionToken>{issued("session")}</SessionToken>
      <SecretAccessKey>{issued("secret")}</SecretAccessKey>
      <Expiration>2099-01-01T00:00:00Z</Expiration>
      <AccessKeyId>{key_id}</AccessKeyId>
    </Credentials>
    <Provider>{ARGS.issuer}</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>standin</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"""
        self.answer(200, xml, "text/xml")

    def oauth(self, cloud, checks, token, audience, refusal, prefix, extra):
        """An OAuth token endpoint's answer (Entra ID's, Google STS's): `checks` of the request
        ((holds, why) pairs), then the subject token's verification."""
        try:
            for holds, why in checks:
                if not holds:
                    raise ValueError(why)
            claims = verify(token, audience)
        except Exception as e:
            event(cloud=cloud, accepted=False, reason=f"{type(e).__name__}: {e}")
            return self.answer(400, json.dumps(refusal), "application/json")
        access = issued(prefix)
        event(cloud=cloud, accepted=True, sub=claims["sub"], aud=claims["aud"], issued=access)
        body = {"access_token": access, "token_type": "Bearer", "expires_in": 3599, **extra}
        self.answer(200, json.dumps(body), "application/json")

    def azure(self, form):
        checks = [
            (form.get("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
             "not a client assertion"),
            (form.get("client_id") == ARGS.azure_client_id, "unknown client_id"),
        ]
        refusal = {"error": "invalid_client", "error_description": "AADSTS700212: no matching federated identity record"}
        self.oauth("azure", checks, form.get("client_assertion", ""), ARGS.azure_audience, refusal,
                   "azure-access-", {"ext_expires_in": 3599})

    def gcp(self, form):
        checks = [
            (form.get("grant_type") == "urn:ietf:params:oauth:grant-type:token-exchange", "not a token exchange"),
            (form.get("audience") == ARGS.gcp_audience, "unknown workload identity provider"),
        ]
        refusal = {"error": "invalid_grant", "error_description": "The audience in ID Token does not match"}
        self.oauth("gcp", checks, form.get("subject_token", ""), ARGS.gcp_token_audience, refusal,
                   "ya29.standin-", {"issued_token_type": "urn:ietf:params:oauth:token-type:access_token"})


def main():
    global ARGS, JWKS
    p = argparse.ArgumentParser()
    for a in ["issuer", "subject", "cert", "key", "port-file", "events", "aws-audience", "azure-audience",
              "azure-client-id", "gcp-token-audience", "gcp-audience"]:
        p.add_argument("--" + a, required=True)
    ARGS = p.parse_args()
    JWKS = discover(ARGS.issuer)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(ARGS.cert, ARGS.key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    tmp = ARGS.port_file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, ARGS.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
