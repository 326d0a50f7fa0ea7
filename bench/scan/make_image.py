#!/usr/bin/env python3
"""Builds a large `docker save`-style image tar (OCI layout + manifest.json, uncompressed layers) out of
a directory tree, for the scanner's memory benchmark: each layer holds the whole tree under its own
prefix, so an N-layer image is N times the tree's size. One extra gzip layer whites out the first
layer's copy of every file, so presence is exercised at scale.

  make_image.py --tree DIR --layers 20 --out image.tar
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile


def layer_from_tree(tree, prefix, path):
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for root, _dirs, files in os.walk(tree):
            for name in sorted(files):
                full = os.path.join(root, name)
                tf.add(full, arcname=os.path.join(prefix, os.path.relpath(full, tree)), recursive=False)


def whiteout_layer(prefix):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo(os.path.join(prefix, ".wh..wh..opq"))
        tf.addfile(ti, io.BytesIO(b""))
    return gzip.compress(buf.getvalue(), mtime=0)


def digest_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest(), os.path.getsize(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", required=True)
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="vouch-img-")
    try:
        layers = []  # (hex, size, media type, path or bytes)
        for i in range(a.layers):
            p = os.path.join(work, f"layer{i}.tar")
            layer_from_tree(a.tree, f"srv/copy{i}", p)
            hexd, size = digest_file(p)
            layers.append((hexd, size, "application/vnd.oci.image.layer.v1.tar", p))
        wh = whiteout_layer("srv/copy0")
        whp = os.path.join(work, "wh.tar.gz")
        open(whp, "wb").write(wh)
        hexd, size = digest_file(whp)
        layers.append((hexd, size, "application/vnd.oci.image.layer.v1.tar+gzip", whp))
        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/usr/bin"]},
                             "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        chex = hashlib.sha256(config).hexdigest()
        manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          "digest": "sha256:" + chex, "size": len(config)},
                               "layers": [{"mediaType": m, "digest": "sha256:" + h, "size": s}
                                          for h, s, m, _ in layers]}).encode()
        mhex = hashlib.sha256(manifest).hexdigest()
        index = json.dumps({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                                               "digest": "sha256:" + mhex, "size": len(manifest)}]}).encode()
        docker = json.dumps([{"Config": "blobs/sha256/" + chex, "RepoTags": ["bench:1"],
                              "Layers": ["blobs/sha256/" + h for h, _, _, _ in layers]}]).encode()
        with tarfile.open(a.out, "w", format=tarfile.PAX_FORMAT) as tf:
            def add_bytes(name, data):
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            add_bytes("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            add_bytes("index.json", index)
            add_bytes("manifest.json", docker)
            add_bytes("blobs/sha256/" + chex, config)
            add_bytes("blobs/sha256/" + mhex, manifest)
            for h, _s, _m, p in layers:
                tf.add(p, arcname="blobs/sha256/" + h, recursive=False)
    finally:
        shutil.rmtree(work)
    print(f"wrote {a.out}: {os.path.getsize(a.out) / 1e9:.2f} GB, {a.layers + 1} layers")


if __name__ == "__main__":
    main()
