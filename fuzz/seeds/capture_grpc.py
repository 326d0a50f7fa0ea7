# Records what a real gRPC C-core client (python grpcio, via py-spiffe) writes to a Workload API
# socket (python3 capture_grpc.py OUT_DIR; needs `pip install spiffe==0.3.2`): a fake server answers the HTTP/2 preface with SETTINGS and SETTINGS ACK, then records.
import os, socket, sys, threading, time
out_dir = sys.argv[1]
path = out_dir + "/api.sock"
try: os.unlink(path)
except FileNotFoundError: pass
srv = socket.socket(socket.AF_UNIX); srv.bind(path); srv.listen(4)
out = []
def serve():
    for i in range(3):
        c, _ = srv.accept()
        c.settimeout(1.5)
        c.sendall(bytes([0,0,0,4,0,0,0,0,0]))  # SETTINGS
        data = b""
        acked = False
        try:
            while True:
                chunk = c.recv(65536)
                if not chunk: break
                data += chunk
                if not acked:
                    c.sendall(bytes([0,0,0,4,1,0,0,0,0]))  # ACK
                    acked = True
        except (socket.timeout, OSError):
            pass
        out.append(data)
        c.close()
threading.Thread(target=serve, daemon=True).start()
from spiffe import WorkloadApiClient
for call in ("x509", "jwt", "bundles"):
    try:
        client = WorkloadApiClient(socket_path="unix:" + path)
        if call == "x509": client.fetch_x509_svid()
        elif call == "jwt": client.fetch_jwt_svid(audience={"db", "cache"})
        else: client.fetch_jwt_bundles()
    except Exception as e:
        print(call, type(e).__name__, file=sys.stderr)
time.sleep(2)
for i, d in enumerate(out):
    name = ("x509", "jwt", "bundles")[i]
    # The harness adds the 24-byte preface itself.
    open(f"{out_dir}/grpc-python-{name}", "wb").write(d[24:])
    print(i, len(d), d[:40])
