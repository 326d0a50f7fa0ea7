"""A workload using the independent Python SPIFFE client (py-spiffe, PyPI `spiffe`), unchanged, in a
trust domain federated with PEER_TD: with only what its Workload API gives it, it opens mTLS to a
workload of PEER_TD listening on PEER_ADDR (Python's ssl, the peer's roots from the federated bundle)
and validates PEER_JWT, a JWT-SVID of PEER_TD for JWT_AUDIENCE. Prints what it saw as JSON.

Run by federation.rs with SPIFFE_ENDPOINT_SOCKET pointing at the agent and OUT_DIR a private temp dir.
"""
import json
import os
import socket
import ssl

from cryptography.hazmat.primitives import serialization
from spiffe import TrustDomain, WorkloadApiClient

client = WorkloadApiClient(os.environ["SPIFFE_ENDPOINT_SOCKET"], default_timeout=10)
peer_td = TrustDomain(os.environ["PEER_TD"])
out = os.environ["OUT_DIR"]
svid = client.fetch_x509_svid()
peer_bundle = client.fetch_x509_bundles().get_bundle_for_trust_domain(peer_td)
result = {"x509_spiffe_id": str(svid.spiffe_id), "peer_bundle": peer_bundle is not None}
if peer_bundle is not None:
    chain, key, roots = (os.path.join(out, n) for n in ("chain.pem", "key.pem", "peer-roots.pem"))
    svid.save(chain, key, serialization.Encoding.PEM)
    peer_bundle.save(roots, serialization.Encoding.PEM)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # SPIFFE: the peer is known by its SPIFFE ID, checked below
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=roots)
    ctx.load_cert_chain(chain, key)
    host, port = os.environ["PEER_ADDR"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with ctx.wrap_socket(raw) as tls:
            tls.sendall(b"ping")
            result["answer"] = tls.recv(4).decode()
            result["peer_ids"] = [v for (k, v) in tls.getpeercert().get("subjectAltName", ()) if k == "URI"]
validated = client.validate_jwt_svid(os.environ["PEER_JWT"], os.environ["JWT_AUDIENCE"])
result["validated_spiffe_id"] = str(validated.spiffe_id)
print(json.dumps(result))
